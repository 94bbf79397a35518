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
    type=click.Choice(["ACTIVE", "DRAINING", "DRAINED", "DOWN"], case_sensitive=False),
    help="Only nodes in this state.",
)
@click.option("--ce", metavar="CE", help="Only nodes of this compute environment.")
@global_options
def nodes_list(state: str | None = None, ce: str | None = None) -> None:
    """List nodes (hpcbatch's ListNodes)."""
    listed = get_client().list_nodes().get("nodes") or []
    if state:
        listed = [n for n in listed if n.get("state") == state.upper()]
    if ce:
        listed = [n for n in listed if n.get("computeEnvironment") == ce]
    if json_output():
        print_json({"nodes": listed})
        return
    from hpcbatch.cli.output import print_nodes

    print_nodes(listed)
