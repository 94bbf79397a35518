"""Identity and access: SigV4 access keys, roles and the policy."""
