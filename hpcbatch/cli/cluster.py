"""``hpcbatch cluster up|status|down`` (a local test cluster) and ``hpcbatch head`` (the daemon)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from hpcbatch.cli.common import global_options, json_output, print_json

if TYPE_CHECKING:
    from hpcbatch.localcluster import ClusterStatus

_home_option = click.option(
    "--home",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Where the cluster lives [default: $HPCBATCH_HOME or ~/.hpcbatch].",
)


@click.group()
def cluster() -> None:
    """A head and N nodes on this machine (loopback, no root): for trying and testing."""


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)  # several lines when a log tail is included
    sys.exit(1)


@cluster.command("up")
@click.option(
    "--nodes",
    "-n",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Node agents to start.",
)
@_home_option
@global_options
def cluster_up(nodes: int, home: str | None) -> None:
    """Start a local cluster with compute environment and job queue `default`."""
    from hpcbatch.localcluster import LocalCluster, LocalClusterError, default_home

    local = LocalCluster(home)
    try:
        local.up(nodes=nodes)
    except LocalClusterError as e:
        _fail(e)
    if json_output():
        print_json(local.record())
        return
    from hpcbatch.cli.output import fold_nodes

    names = fold_nodes(f"node{i}" for i in range(1, nodes + 1))
    click.echo(f"local cluster up: {local.endpoint}, {nodes} node(s) {names} ACTIVE")
    click.echo(f"  files and logs:  {local.dir}")
    if local.home != os.path.abspath(os.path.expanduser(default_home())):
        click.echo(f"  use it with:     export HPCBATCH_HOME={local.home}")
    click.echo("  submit a job:    hpcbatch submit -- hostname")
    click.echo(
        "  stop it:         hpcbatch cluster down" + (f" --home {local.home}" if home else "")
    )


@cluster.command("status")
@_home_option
@global_options
def cluster_status(home: str | None) -> None:
    """Show the local cluster's processes and nodes; exit 1 if it is not fully running."""
    from hpcbatch.localcluster import LocalCluster

    st = LocalCluster(home).status()
    if json_output():
        print_json(_status_doc(st))
    else:
        _print_status(st)
    if not st.running:
        sys.exit(1)


def _status_doc(st: ClusterStatus) -> dict[str, Any]:
    return {
        "home": st.home,
        "recorded": st.recorded,
        "running": st.running,
        "endpoint": st.endpoint,
        "processes": st.processes,
        "nodes": st.nodes,
        "error": st.error,
    }


def _print_status(st: ClusterStatus) -> None:
    from hpcbatch.cli.output import fold_nodes, print_nodes

    if not st.recorded:
        click.echo(f"no local cluster in {st.home}/cluster: start one with 'hpcbatch cluster up'")
        return
    up = [n for n, alive in st.processes.items() if alive]
    gone = [n for n, alive in st.processes.items() if not alive]
    click.echo(f"endpoint:  {st.endpoint}")
    click.echo(f"running:   {fold_nodes(up)}")
    if gone:
        click.echo(f"stopped:   {fold_nodes(gone)}  (see {st.home}/cluster/<name>.log)")
    if st.error:
        click.echo(f"head:      {st.error}")
    if st.nodes is not None:
        by_state: dict[str, list[str]] = {}
        for n in st.nodes:
            by_state.setdefault(str(n.get("state")), []).append(str(n.get("name")))
        click.echo(
            "nodes:     "
            + ("; ".join(f"{fold_nodes(v)} {k}" for k, v in sorted(by_state.items())) or "none")
        )
        if st.nodes:
            click.echo()
            print_nodes(st.nodes)


@cluster.command("down")
@_home_option
@global_options
def cluster_down(home: str | None) -> None:
    """Stop the local cluster's processes (exactly those it started)."""
    from hpcbatch.cli.output import fold_nodes
    from hpcbatch.localcluster import LocalCluster

    stopped = LocalCluster(home).down()
    if json_output():
        print_json({"stopped": stopped})
    elif stopped:
        click.echo(f"stopped {fold_nodes(stopped)}")
    else:
        click.echo("no local cluster was running")


@click.command()
@click.option(
    "--config",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    metavar="FILE",
    help="The head's TOML configuration.",
)
def head(config: str) -> None:
    """Run the head daemon (in the foreground)."""
    from hpcbatch.head.daemon import main as daemon_main

    sys.exit(daemon_main(config))
