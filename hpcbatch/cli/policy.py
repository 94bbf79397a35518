"""Fair-share scheduling policies: ``hpcbatch policy create|update|describe|delete|list``.

Each command sends one AWS Batch operation (CreateSchedulingPolicy, ...). ``--share
ID[=WEIGHT]`` builds ``fairsharePolicy.shareDistribution`` (lower weight = larger share; an
ID ending in ``*`` covers every identifier with that prefix); anything else goes in
``--cli-input-json``. NAME may be a name or the policy's ARN.
"""

from __future__ import annotations

from typing import Any

import click

from hpcbatch.cli.common import (
    cli_input_json_option,
    get_client,
    global_options,
    json_output,
    load_cli_input_json,
    parse_key_values,
    print_json,
    require,
    tags_option,
)
from hpcbatch.jobspec import merge_body


def _shares(shares: tuple[str, ...]) -> list[dict[str, Any]] | None:
    out = []
    for item in shares:
        ident, eq, weight = item.partition("=")
        entry: dict[str, Any] = {"shareIdentifier": ident}
        if eq:
            try:
                entry["weightFactor"] = float(weight)
            except ValueError:
                raise click.BadParameter(f"{item!r}: WEIGHT must be a number", param_hint="--share") from None
        out.append(entry)
    return out or None


def _fairshare(shares: tuple[str, ...], decay: int | None, reservation: int | None) -> dict[str, Any] | None:
    fair = {
        k: v
        for k, v in {
            "shareDistribution": _shares(shares),
            "shareDecaySeconds": decay,
            "computeReservation": reservation,
        }.items()
        if v is not None
    }
    return fair or None


_options = [
    click.option("--share", "shares", multiple=True, metavar="ID[=WEIGHT]",
                 help="A share and its weight factor (default 1; lower = larger share). Repeatable."),
    click.option("--decay", type=click.IntRange(0, 604_800), metavar="S",
                 help="shareDecaySeconds: how long past usage counts (0: current usage only)."),
    click.option("--compute-reservation", type=click.IntRange(0, 99), metavar="N",
                 help="Keep (N/100)^active-shares of the vCPUs for shares not running yet."),
]


def _with_options(f: Any) -> Any:
    for option in reversed(_options):
        f = option(f)
    return f


def _arn(client: Any, name: str) -> str:
    if name.startswith("arn:"):
        return name
    for entry in client.list_scheduling_policies().get("schedulingPolicies", []):
        if entry["arn"].rsplit("/", 1)[-1] == name:
            return str(entry["arn"])
    raise click.UsageError(f"no scheduling policy named {name} (hpcbatch policy list shows them)")


@click.group()
def policy() -> None:
    """Fair-share scheduling policies for job queues."""


@policy.command("create")
@click.argument("name", required=False)
@_with_options
@tags_option
@cli_input_json_option
@global_options
def policy_create(name: str | None, shares: tuple[str, ...], decay: int | None,
                  compute_reservation: int | None, tags: tuple[str, ...], cli_input_json: str | None) -> None:
    """Create a fair-share scheduling policy (CreateSchedulingPolicy); print its ARN.

    \b
      hpcbatch policy create research --share teamA=0.5 --share teamB --share 'lab*=2' --decay 3600
      hpcbatch queue create shared --ce default --scheduling-policy-arn ARN
    """
    body = merge_body(load_cli_input_json(cli_input_json), {
        "name": name,
        "fairsharePolicy": _fairshare(shares, decay, compute_reservation),
        "tags": parse_key_values(tags, "--tag") or None,
    })
    require(body, "name", hint="give NAME")
    answer = get_client().create_scheduling_policy(**body)
    print_json(answer) if json_output() else click.echo(answer["arn"])


@policy.command("update")
@click.argument("name", required=False)
@_with_options
@cli_input_json_option
@global_options
def policy_update(name: str | None, shares: tuple[str, ...], decay: int | None,
                  compute_reservation: int | None, cli_input_json: str | None) -> None:
    """Replace a policy's fair-share settings (UpdateSchedulingPolicy); queues using it follow."""
    client = get_client()
    body = merge_body(load_cli_input_json(cli_input_json), {
        "arn": _arn(client, name) if name else None,
        "fairsharePolicy": _fairshare(shares, decay, compute_reservation),
    })
    require(body, "arn", hint="give NAME")
    answer = client.update_scheduling_policy(**body)
    print_json(answer) if json_output() else click.echo(f"updated scheduling policy {name or body['arn']}")


@policy.command("describe")
@click.argument("names", nargs=-1)
@global_options
def policy_describe(names: tuple[str, ...]) -> None:
    """Show scheduling policies, all of them or those named (DescribeSchedulingPolicies)."""
    client = get_client()
    arns = [_arn(client, n) for n in names] or [
        e["arn"] for e in client.list_scheduling_policies().get("schedulingPolicies", [])
    ]
    docs = client.describe_scheduling_policies(arns=arns)["schedulingPolicies"] if arns else []
    if json_output():
        print_json({"schedulingPolicies": docs})
        return
    for doc in docs:
        fair = doc.get("fairsharePolicy") or {}
        click.echo(f"{doc['name']}  {doc['arn']}")
        click.echo(f"  shareDecaySeconds={fair.get('shareDecaySeconds', 0)} "
                   f"computeReservation={fair.get('computeReservation', 0)}")
        for share in fair.get("shareDistribution", []):
            click.echo(f"  share {share['shareIdentifier']} weight {share.get('weightFactor', 1.0):g}")


@policy.command("delete")
@click.argument("name")
@global_options
def policy_delete(name: str) -> None:
    """Delete a scheduling policy no job queue uses (DeleteSchedulingPolicy)."""
    client = get_client()
    answer = client.delete_scheduling_policy(arn=_arn(client, name))
    print_json(answer) if json_output() else click.echo(f"deleted scheduling policy {name}")


@policy.command("list")
@global_options
def policy_list() -> None:
    """The ARNs of every scheduling policy (ListSchedulingPolicies)."""
    answer = get_client().list_scheduling_policies()
    if json_output():
        print_json(answer)
        return
    for entry in answer.get("schedulingPolicies", []):
        click.echo(entry["arn"])
