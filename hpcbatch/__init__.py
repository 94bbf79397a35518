"""hpcbatch: AWS Batch for a cluster you own."""

# The one place the version is written: pyproject.toml reads it (dynamic = ["version"]), and
# the Ansible roles compare it with the inventory's hpcbatch_version.
__version__ = "0.1.0"
