"""``hpcbatch nodes``: the machines the head knows, their state and what runs on them."""

from __future__ import annotations

import click

from hpcbatch.cli.common import get_client, global_options, json_output, print_json


@click.group(invoke_without_command=True)
@global_options
@click.pass_context
def nodes(ctx: click.Context) -> None:
    """Nodes: state, capacity, running jobs (``hpcbatch nodes`` = ``nodes list``)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(nodes_list)


@nodes.command("list")
@click.option(
    "--state",
    # POWER*: a MANAGED compute environment's pool nodes (docs/managed.md)
    type=click.Choice(["ACTIVE", "DRAINING", "DRAINED", "DOWN", "POWERED_DOWN", "POWERING_UP", "POWERING_DOWN"],
                      case_sensitive=False),
    help="Only nodes in this state.",
)
@click.option("--ce", metavar="CE", help="Only nodes of this compute environment.")
@global_options
def nodes_list(state: str | None = None, ce: str | None = None) -> None:
    """List nodes (hpcbatch's ListNodes)."""
    listed = get_client().all_nodes()
    if state:
        listed = [n for n in listed if n.get("state") == state.upper()]
    if ce:
        listed = [n for n in listed if n.get("computeEnvironment") == ce]
    if json_output():
        print_json({"nodes": listed})
        return
    from hpcbatch.cli.output import print_nodes

    print_nodes(listed)
    _print_quarantined(listed)


def _print_quarantined(listed: list[dict[str, object]]) -> None:
    """Messages the head set aside (failed repeatedly): one line each, under the nodes."""
    from hpcbatch.cli.output import ago, print_table, truncate

    rows = [
        [n.get("name"), q.get("type"), q.get("jobId") or "-", q.get("attemptId") or "-", q.get("tries"),
         ago(q.get("at")), truncate(q.get("error"))]
        for n in listed for q in (n.get("quarantinedMessages") or [])  # type: ignore[attr-defined]
    ]
    if rows:
        print()
        print_table(["QUARANTINED", "MESSAGE", "JOB", "ATTEMPT", "TRIES", "WHEN", "ERROR"], rows, empty="")


# -- node keys (the control plane's enrollment; admins only) -----------------------------------


@nodes.group("keys")
@global_options
def nodes_keys() -> None:
    """Node keys: enroll agents (accept), refuse them (reject), cut them off (revoke).

    \b
    A new agent's key waits as "pending" until accepted:
      hpcbatch nodes keys list
      hpcbatch nodes keys accept node7     # compare its key with the agent's log first
    """


@nodes_keys.command("list")
@click.option(
    "--state",
    type=click.Choice(["pending", "accepted", "rejected"], case_sensitive=False),
    help="Only keys in this state.",
)
@global_options
def node_keys_list(state: str | None = None) -> None:
    """List node keys: name, state, since when, public key."""
    listed = get_client().list_node_keys().get("nodeKeys") or []
    if state:
        listed = [k for k in listed if k.get("state") == state.lower()]
    if json_output():
        print_json({"nodeKeys": listed})
        return
    from hpcbatch.cli.output import ago, print_table

    print_table(
        ["NAME", "STATE", "SINCE", "PUBLIC KEY"],
        ([k.get("name"), k.get("state"), ago(k.get("since")), k.get("publicKey")] for k in listed),
        empty="no node keys",
    )


def _node_key_command(operation: str, verb: str, help_text: str) -> click.Command:
    @click.argument("name")
    @global_options
    def command(name: str) -> None:
        getattr(get_client(), operation)(name=name)
        if not json_output():
            click.echo(f"{verb} node key {name}")
        else:
            print_json({})

    command.__doc__ = help_text
    return nodes_keys.command(operation.removesuffix("_node_key"))(command)


node_keys_accept = _node_key_command("accept_node_key", "accepted", "Trust NAME's pending (or rejected) key.")
node_keys_reject = _node_key_command("reject_node_key", "rejected", "Refuse NAME's pending key.")
node_keys_revoke = _node_key_command(
    "revoke_node_key", "revoked", "Revoke NAME's accepted key: the node is cut off at once."
)
node_keys_delete = _node_key_command(
    "delete_node_key", "deleted", "Forget NAME's key in any state (it may enroll again)."
)


@nodes.command("drain")
@click.argument("name")
@click.option("--reason", help="Why (shown in `nodes list`); default names you.")
@click.option("--wait", is_flag=True, help="Return once NAME is DRAINED (its running jobs ended).")
@click.option(
    "--timeout", type=click.FloatRange(min=0), default=3600.0, show_default=True,
    help="With --wait: give up (exit 1, NAME stays draining) after this many seconds.",
)
@global_options
def nodes_drain(name: str, reason: str | None, wait: bool, timeout: float) -> None:
    """Place no new work on NAME; running jobs finish (DRAINING, then DRAINED). Admins only."""
    body = {"name": name}
    if reason:
        body["reason"] = reason
    client = get_client()
    client.drain_node(**body)
    if wait:
        from hpcbatch.cli.drainwait import wait_drained

        wait_drained(client, name, timeout)


@nodes.command("prepull")
@click.argument("image")
@click.option("--nodes", "hostlist", metavar="HOSTLIST", help="Only these nodes (node[1-4]); default every ACTIVE node with a runtime.")
@global_options
def nodes_prepull(image: str, hostlist: str | None) -> None:
    """Pull IMAGE into nodes' caches now, before a big job needs it (`nodes list --json` shows them). Admins only."""
    body: dict[str, object] = {"image": image}
    if hostlist:
        from ClusterShell.NodeSet import NodeSet

        body["nodes"] = list(NodeSet(hostlist))
    out = get_client().prepull_image(**body)  # type: ignore[arg-type]
    from hpcbatch.cli.output import fold_nodes

    click.echo(f"pulling {image} on {fold_nodes(out.get('nodes') or [])}")


@nodes.command("resume")
@click.argument("name")
@global_options
def nodes_resume(name: str) -> None:
    """Let NAME take new work again. Admins only."""
    get_client().resume_node(name=name)


from hpcbatch.cli.bootstrap import nodes_bootstrap  # noqa: E402 - asyncssh loads only when it runs

nodes.add_command(nodes_bootstrap)
