"""What every CLI command shares: global options, the client, request bodies, JSON output.

Kept light on purpose (click, json, os): ``hpcbatch submit`` imports this module and must
start, submit and exit in about 60 ms. Tables live in :mod:`hpcbatch.cli.output`, which
imports rich.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from hpcbatch.client import Client

F = TypeVar("F", bound=Callable[..., Any])

_ENDPOINT = "hpcbatch.endpoint"
_OUTPUT = "hpcbatch.output"
_CLIENT = "hpcbatch.client"


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            ctx.meta[key] = value  # ctx.meta is shared by the whole command chain

    return callback


def global_options(f: F) -> F:
    """``--endpoint`` and ``--output``, accepted before or after the command name."""
    f = click.option(
        "--output",
        "-o",
        type=click.Choice(["table", "json"]),
        expose_value=False,
        is_eager=True,
        callback=_remember(_OUTPUT),
        help="Human tables (default) or the head's JSON answer.",
    )(f)
    f = click.option(
        "--endpoint",
        metavar="URL",
        expose_value=False,
        is_eager=True,
        callback=_remember(_ENDPOINT),
        help="The head, e.g. http://head:8471 (default: $HPCBATCH_ENDPOINT, the local cluster, "
        "or /etc/hpcbatch/client.toml).",
    )(f)
    return f


def output_mode(ctx: click.Context | None = None) -> str:
    ctx = ctx or click.get_current_context()
    return str(ctx.meta.get(_OUTPUT, "table"))


def json_output(ctx: click.Context | None = None) -> bool:
    return output_mode(ctx) == "json"


def get_client(ctx: click.Context | None = None) -> Client:
    """The command's client, made on first use and closed when the command ends."""
    from hpcbatch.client import Client

    ctx = ctx or click.get_current_context()
    client: Client | None = ctx.meta.get(_CLIENT)
    if client is None:
        client = Client(ctx.meta.get(_ENDPOINT))
        ctx.meta[_CLIENT] = client
        ctx.find_root().call_on_close(client.close)
    return client


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


# -- request bodies -----------------------------------------------------------------------


def cli_input_json_option(f: F) -> F:
    """AWS CLI's ``--cli-input-json``: the request body as JSON or ``file://path``."""
    return click.option(
        "--cli-input-json",
        "cli_input_json",
        metavar="JSON|file://PATH",
        help="The AWS request body as JSON (or file://path); explicit options override it.",
    )(f)


def load_cli_input_json(value: str | None) -> dict[str, Any]:
    """Parse ``--cli-input-json``: inline JSON, ``file://path`` or ``-`` for stdin."""
    if not value:
        return {}
    source = "--cli-input-json"
    if value.startswith("file://"):
        path = value[len("file://") :]
        try:
            with open(os.path.expanduser(path), encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise click.BadParameter(
                f"cannot read {path}: {e.strerror}", param_hint=source
            ) from None
        source = path
    elif value == "-":
        text = sys.stdin.read()
    else:
        text = value
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise click.BadParameter(
            f"not valid JSON in {source}: {e}", param_hint="--cli-input-json"
        ) from None
    if not isinstance(doc, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--cli-input-json")
    return doc


def parse_json_option(value: str | None, name: str) -> Any:
    """A structure-valued option (``--compute-resources '{...}'`` or ``file://path``)."""
    if value is None:
        return None
    if value.startswith("file://"):
        try:
            with open(os.path.expanduser(value[len("file://") :]), encoding="utf-8") as f:
                value = f.read()
        except OSError as e:
            raise click.BadParameter(e.strerror or str(e), param_hint=name) from None
    try:
        return json.loads(value)
    except ValueError as e:
        raise click.BadParameter(f"not valid JSON: {e}", param_hint=name) from None


def parse_key_values(pairs: Iterable[str], name: str, from_env: bool = False) -> dict[str, str]:
    """``K=V`` options into a dict; with ``from_env`` a bare ``K`` copies ``$K``."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq:
            if from_env and key in os.environ:
                value = os.environ[key]
            else:
                raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=name)
        if not key:
            raise click.BadParameter(f"{pair!r} has an empty key", param_hint=name)
        out[key] = value
    return out


def require(body: dict[str, Any], *fields: str, hint: str = "") -> None:
    """A usage error naming the first missing field, as AWS names fields."""
    for field in fields:
        if body.get(field) in (None, "", []):
            raise click.UsageError(
                f"{field} is required: {hint or 'give it as an option'} or put it in --cli-input-json"
            )


def tags_option(f: F) -> F:
    return click.option(
        "--tag", "tags", multiple=True, metavar="K=V", help="A resource tag (repeatable)."
    )(f)


def resource_requirements(
    vcpus: float | None, memory: int | None, gpus: int | None
) -> list[dict[str, str]]:
    """AWS resourceRequirements; the values are strings (``"2"``, ``"0.5"``, ``"4096"``)."""
    return [
        {"type": kind, "value": f"{value:g}" if isinstance(value, float) else str(value)}
        for kind, value in (("VCPU", vcpus), ("MEMORY", memory), ("GPU", gpus))
        if value is not None
    ]
