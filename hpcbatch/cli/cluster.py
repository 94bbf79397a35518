"""``hpcbatch cluster up|status|down`` (a local test cluster) and ``hpcbatch head`` (the daemon)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from hpcbatch.cli.common import global_options, json_output, print_json

if TYPE_CHECKING:
    from hpcbatch.localcluster import ClusterStatus
    from hpcbatch.netns import NetnsLayout

_home_option = click.option(
    "--home",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Where the cluster lives [default: $HPCBATCH_HOME or ~/.hpcbatch].",
)


@click.group()
def cluster() -> None:
    """A head and N nodes on this machine (loopback, no root; --netns as root): for trying and testing."""


def _fail(e: Exception) -> NoReturn:
    click.echo(f"error: {e}", err=True)  # several lines when a log tail is included
    sys.exit(1)


@cluster.command("up")
@click.option(
    "--nodes",
    "-n",
    type=click.IntRange(1, 256),
    help="Node agents to start [default: 4].",
)
@click.option(
    "--netns",
    is_flag=True,
    help="Root only: each node in its own network namespace with its own hostname, "
    "a management network (the head's fleet endpoint) and a fabric network (fab0, MTU 9000).",
)
@click.option(
    "--gpus-per-node",
    type=click.IntRange(0, 64),
    help="GPUs each node declares (GPU-node<i>-<j>, no devices behind them): try GPU scheduling without GPUs [default: 0].",
)
@click.option(
    "--store",
    metavar="URL",
    help="Keep the cluster's state in this PostgreSQL database (postgresql://…) instead of "
    "SQLite in its folder; it outlives `cluster down` (docs/ha.md).",
)
@click.option(
    "--heads",
    type=click.IntRange(1, 8),
    help="Heads sharing the --store: one active, the others standbys that take over when it dies [default: 1].",
)
@click.option(
    "--tls/--no-tls",
    default=True,
    show_default=True,
    help="HTTPS on the TCP API with a local CA (cluster/tls/ca.pem: the client, boto3 and the aws CLI trust it).",
)
@_home_option
@global_options
def cluster_up(  # noqa: PLR0913 - a click command: each option is a parameter
    nodes: int | None, netns: bool, gpus_per_node: int | None, store: str | None, heads: int | None, tls: bool, home: str | None
) -> None:
    """Start a local cluster with compute environment and job queue `default`.

    On a cluster already recorded here, restart whatever of it is dead (the head after a
    crash, a node) and keep what runs.
    """
    from hpcbatch.localcluster import LocalCluster, LocalClusterError, default_home, head_names_for
    from hpcbatch.localrecord import ClusterShape

    local = LocalCluster(home)
    try:
        local.up(ClusterShape(nodes=nodes, netns=netns, gpus_per_node=gpus_per_node, store=store, heads=heads, tls=tls))
    except LocalClusterError as e:
        _fail(e)
    if json_output():
        print_json({**(local.record() or {}), "restarted": local.restarted})
        return
    from hpcbatch.cli.output import fold_nodes

    record = local.record() or {}
    nodes = int(record.get("nodes") or 0)
    heads = len(record.get("heads") or ["head"])
    names = fold_nodes(f"node{i}" for i in range(1, nodes + 1))
    if local.restarted is not None:
        kept = sorted(set(record.get("processes") or {}) - set(local.restarted))
        click.echo(
            f"local cluster up: {local.endpoint}, {nodes} node(s) {names}; "
            + (f"restarted {fold_nodes(local.restarted)}" if local.restarted else "nothing was down")
            + (f", kept {fold_nodes(kept)} running" if kept else "")
        )
        return
    click.echo(f"local cluster up: {local.endpoint}, {nodes} node(s) {names} ACTIVE")
    if store:
        from hpcbatch.store.migrate import redact

        click.echo(f"  store:           {redact(store)}")
    if heads > 1:
        click.echo(f"  heads:           {', '.join(head_names_for(heads))}: head active, the others standbys "
                   "(hpcbatch admin heads)")
    layout = local.netns_layout
    if layout is not None:
        click.echo(
            f"  networks:        management {layout.mgmt_subnet} (head {layout.host_mgmt_ip}), "
            f"fabric {layout.fabric_subnet} (MTU {layout.fabric_mtu})"
        )
        click.echo(f"  run on a node:   {' '.join(layout.nodes[0].exec_prefix)} hostname")
    record = local.record() or {}
    click.echo(f"  TCP API (SigV4): {record.get('http_endpoint')}"
               + (f" (CA bundle {local.ca_bundle})" if local.ca_bundle else ""))
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
        "supervised": st.supervised,
        "nodes": st.nodes,
        "error": st.error,
        "netns": st.netns.to_dict() if st.netns else None,
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
        click.echo(f"stopped:   {fold_nodes(gone)}  (see {st.home}/cluster/<name>.log; "
                   "'hpcbatch cluster up' restarts them)")
    click.echo("supervisor: " + ("running (restarts agents that die)" if st.supervised
                                 else "not running ('hpcbatch cluster up' starts it)"))
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
    if st.netns is not None:
        click.echo()
        _print_netns(st.netns, st.nodes or [])


def _print_netns(layout: NetnsLayout, nodes: list[dict[str, Any]]) -> None:
    """Each node's namespace and addresses (what the layout made; hostname as the head saw it)."""
    from hpcbatch.cli.output import print_table

    click.echo(
        f"networks:  management {layout.mgmt_subnet} on {layout.mgmt_bridge} "
        f"(head {layout.host_mgmt_ip}), fabric {layout.fabric_subnet} on {layout.fabric_bridge} "
        f"(MTU {layout.fabric_mtu})"
    )
    seen = {str(n.get("name")): n for n in nodes}
    print_table(
        ["NAME", "HOSTNAME", "MANAGEMENT", "FABRIC", "NETNS"],
        (
            [
                n.name,
                seen.get(n.name, {}).get("hostname") or "-",
                f"{n.mgmt_ip} ({n.mgmt_interface})",
                f"{n.fabric_ip} ({n.fabric_interface})",
                n.netns,
            ]
            for n in layout.nodes
        ),
        empty="no nodes",
    )


@cluster.command("down")
@_home_option
@global_options
def cluster_down(home: str | None) -> None:
    """Stop the local cluster's processes (exactly those it started) and remove its namespaces."""
    from hpcbatch.cli.output import fold_nodes
    from hpcbatch.localcluster import LocalCluster, LocalClusterError

    try:
        stopped = LocalCluster(home).down()
    except LocalClusterError as e:
        _fail(e)
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
@click.option(
    "--store",
    metavar="URL",
    help="The store, replacing the config's: a postgresql:// URL (shared by active/standby heads) "
    "or a SQLite file path.",
)
def head(config: str, store: str | None) -> None:
    """Run the head daemon (in the foreground)."""
    from hpcbatch.head.daemon import main as daemon_main

    sys.exit(daemon_main(config, store=store))
