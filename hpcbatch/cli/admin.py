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
    me = get_client().call("/hpcbatch/v1/whoami", {})
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
@click.option("--profile", help="Profile name in the printed credentials block (default hpcbatch-USER).")
@global_options
def keys_create(user: str, role: str, profile: str | None) -> None:
    """Issue a key; the secret is printed once, as a ~/.aws/credentials profile."""
    body: dict[str, Any] = {"user": user, "role": role}
    if profile:
        body["profile"] = profile
    created = get_client().call("/hpcbatch/v1/createaccesskey", body)
    if get_client().endpoint.startswith("unix:"):  # this host is the head
        _warn_unless_unix_user(user)
    if json_output():
        print_json(created)
        return
    click.echo(created["credentialsProfile"], nl=False)
    click.echo(f"# access key for {user} (role {role}); the secret is not shown again", err=True)


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
    listed = get_client().call("/hpcbatch/v1/listaccesskeys", {})["accessKeys"]
    if json_output():
        print_json({"accessKeys": listed})
        return
    for key in listed:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.get("created_at", 0) / 1000))
        click.echo(f"{key['access_key_id']}  {key['user']:<16} {key['role']:<10} {key['status']:<8} {created}")


def _set_status(key_id: str, status: str) -> None:
    get_client().call("/hpcbatch/v1/updateaccesskey", {"accessKeyId": key_id, "status": status})


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
    get_client().call("/hpcbatch/v1/deleteaccesskey", {"accessKeyId": access_key_id})


@admin.command("audit")
@click.option("--user", help="Only calls by this user.")
@click.option("--max", "max_results", type=int, default=50, show_default=True)
@global_options
def audit(user: str | None, max_results: int) -> None:
    """The audit log of mutating calls, newest first."""
    body: dict[str, Any] = {"maxResults": max_results}
    if user:
        body["user"] = user
    events = get_client().call("/hpcbatch/v1/listaudit", body)["events"]
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
