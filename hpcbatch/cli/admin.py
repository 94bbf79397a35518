"""``hpcbatch admin``: access keys and the audit log (admins only); ``hpcbatch whoami``."""

from __future__ import annotations

import time
from typing import Any

import click

from hpcbatch.cli.common import get_client, global_options, json_output, print_json

ROLES = ("admin", "developer", "user")


@click.command()
@global_options
def whoami() -> None:
    """Show who the head thinks you are, and your role."""
    me = get_client().who_am_i()
    if json_output():
        print_json(me)
        return
    via = "access key " + me["accessKeyId"] if me.get("accessKeyId") else "the local socket"
    click.echo(f"{me['user']} (role {me['role']}, via {via})")


@click.group()
@global_options
def admin() -> None:
    """Administration: access keys for the HTTP API, the audit log."""


@admin.group()
@global_options
def keys() -> None:
    """Access keys (SigV4), each bound to a Unix user and a role."""


@keys.command("create")
@click.option("--user", required=True, help="Unix user the key acts as.")
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True)
@click.option("--profile", help="Name of the printed AWS profile (default hpcbatch-USER).")
@click.option("--endpoint-url", metavar="URL",
              help="The head's HTTPS endpoint written into the profile (default: the local cluster's, or the head's own).")
@click.option("--ca-bundle", metavar="FILE",
              help="CA bundle written into the profile (default: the local cluster's CA, $HPCBATCH_CA_BUNDLE, $AWS_CA_BUNDLE).")
@global_options
def keys_create(user: str, role: str, profile: str | None, endpoint_url: str | None, ca_bundle: str | None) -> None:
    """Issue a key; the secret is printed once, as a complete ~/.aws/config profile.

    The profile holds the key, the secret, the region, the head's endpoint (in a
    ``services`` section, for ``batch`` and ``cloudwatch_logs``: CloudWatch Logs is on the same port)
    and the CA bundle, so boto3 and the aws CLI work at the first call:
    append it to ~/.aws/config and set AWS_PROFILE. The head answers only over its Unix
    socket or HTTPS: a secret never crosses the network in clear.
    """
    from hpcbatch.auth.keys import aws_profile

    profile = profile or f"hpcbatch-{user}"
    client = get_client()
    created = client.create_access_key(user=user, role=role, profile=profile)
    endpoint, bundle = _profile_endpoint(client, endpoint_url, ca_bundle)
    text = aws_profile(created["accessKeyId"], created["secretAccessKey"], profile,
                       region=created.get("region") or "local", endpoint=endpoint, ca_bundle=bundle)
    if client.endpoint.startswith("unix:"):  # this host is the head
        _warn_unless_unix_user(user)
    if json_output():
        print_json({**created, "awsProfile": text, "endpointUrl": endpoint, "caBundle": bundle})
        return
    click.echo(text, nl=False)
    click.echo(f"# access key for {user} (role {role}); the secret is not shown again. Append the profile "
               f"to ~/.aws/config and use it with AWS_PROFILE={profile}", err=True)
    if endpoint and endpoint.startswith("http://"):
        click.echo(f"# warning: {endpoint} is plain HTTP: give the head tls_cert and tls_key", err=True)


def _profile_endpoint(client: Any, endpoint_url: str | None, ca_bundle: str | None) -> tuple[str | None, str | None]:
    """The TCP endpoint and CA bundle a new key's profile names: the options, else the
    local cluster's record (when that is the head we talk to), else the head's own URL."""
    import os
    import socket

    from hpcbatch.client import resolve_ca_bundle
    from hpcbatch.localcluster import LocalCluster

    record = LocalCluster().record() or {}
    endpoint = endpoint_url
    if endpoint is None and client.endpoint.startswith(("http://", "https://")):
        endpoint = client.endpoint
    local = record.get("socket_endpoint") and client.endpoint in str(record["socket_endpoint"]).split(",")
    if endpoint is None and local:
        endpoint = str(record["http_endpoint"]).split(",")[0]
    if endpoint is None:
        url = str(client.describe_head().get("url") or "")
        for wildcard in ("//0.0.0.0:", "//[::]:"):  # reached over the Unix socket: we are on the head
            url = url.replace(wildcard, f"//{socket.getfqdn()}:")
        endpoint = url or None
    bundle = ca_bundle or (record.get("ca_bundle") if local else None)
    if not bundle and endpoint and endpoint.startswith("https://"):
        bundle = resolve_ca_bundle(None, [endpoint])
    return endpoint, os.path.abspath(bundle) if bundle else None


def _warn_unless_unix_user(user: str) -> None:
    """Jobs run as the key's Unix user on the nodes: say so when the head has none."""
    import pwd

    try:
        pwd.getpwnam(user)
    except KeyError:
        click.echo(f"warning: there is no Unix user {user!r} on the head: jobs submitted with this key "
                   f"fail until {user} exists with the same uid on the head and every node "
                   "(useradd, or your site's directory: sssd/LDAP)", err=True)


@keys.command("list")
@global_options
def keys_list() -> None:
    """List access keys (never their secrets)."""
    listed = get_client().list_access_keys()["accessKeys"]
    if json_output():
        print_json({"accessKeys": listed})
        return
    for key in listed:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.get("created_at", 0) / 1000))
        click.echo(f"{key['access_key_id']}  {key['user']:<16} {key['role']:<10} {key['status']:<8} {created}")


def _set_status(key_id: str, status: str) -> None:
    get_client().update_access_key(accessKeyId=key_id, status=status)


@keys.command("disable")
@click.argument("access_key_id")
@global_options
def keys_disable(access_key_id: str) -> None:
    """Disable a key: requests signed with it are refused."""
    _set_status(access_key_id, "Inactive")


@keys.command("enable")
@click.argument("access_key_id")
@global_options
def keys_enable(access_key_id: str) -> None:
    """Enable a disabled key again."""
    _set_status(access_key_id, "Active")


@keys.command("delete")
@click.argument("access_key_id")
@global_options
def keys_delete(access_key_id: str) -> None:
    """Delete a key for good."""
    get_client().delete_access_key(accessKeyId=access_key_id)


@admin.command("audit")
@click.option("--user", help="Only calls by this user.")
@click.option("--max", "max_results", type=int, default=50, show_default=True)
@global_options
def audit(user: str | None, max_results: int) -> None:
    """The audit log of mutating calls, newest first."""
    body: dict[str, Any] = {"maxResults": max_results}
    if user:
        body["user"] = user
    events = get_client().list_audit(**body)["events"]
    if json_output():
        print_json({"events": events})
        return
    for e in events:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["at"] / 1000))
        click.echo(f"{at}  {e['user']:<12} {e['operation']:<26} {e.get('target') or '-':<38} {e['outcome']}")


@admin.command("migrate")
@click.option("--store", "target", metavar="URL|PATH", help="A postgresql:// URL or a SQLite file.")
@click.option(
    "--config", type=click.Path(exists=True, dir_okay=False), metavar="FILE", help="Migrate this head config's store."
)
@click.option("--dry-run", is_flag=True, help="Only list the migrations that would be applied.")
@global_options
def migrate(target: str | None, config: str | None, dry_run: bool) -> None:
    """Upgrade a store's schema in place (run once, on any machine that reaches the store)."""
    from hpcbatch.store import migrate as migrations

    if config:
        from hpcbatch.head.config import load_head_config

        target = target or load_head_config(config).store_target
    if not target:
        raise click.UsageError("give --store URL|PATH or --config FILE")
    todo = migrations.pending(target) if dry_run else migrations.migrate(target)
    if json_output():
        print_json({"store": migrations.redact(target), "pending" if dry_run else "applied": todo})
        return
    verb = "would apply" if dry_run else "applied"
    click.echo(f"{migrations.redact(target)}: {verb} {', '.join(todo) if todo else 'nothing: the schema is current'}")


@admin.command("heads")
@global_options
def heads() -> None:
    """Every head named in the endpoint list, its role (active/standby), and the epoch."""
    from hpcbatch.cli.common import _ENDPOINT
    from hpcbatch.client import Client, HeadUnreachableError, resolve_endpoint

    seen = []
    for endpoint in resolve_endpoint(click.get_current_context().meta.get(_ENDPOINT)).split(","):
        row: dict[str, Any] = {"endpoint": endpoint}
        try:
            with Client(endpoint, timeout=5) as c:
                row.update(c.describe_head())
        except HeadUnreachableError as e:
            row["role"], row["error"] = "unreachable", e.message
        seen.append(row)
    if json_output():
        print_json({"heads": seen})
        return
    for row in seen:
        active = row.get("active") or {}
        detail = row.get("error") or (
            f"head {row['headId'][:8]}, epoch {row['epoch']}; active: {active.get('url', 'none')}"
            f" (epoch {active.get('epoch', '-')})"
        )
        click.echo(f"{row['endpoint']:<40} {row['role']:<12} {detail}")
