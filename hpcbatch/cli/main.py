"""The ``hpcbatch`` command: the root group, lazy loading of commands, exit codes.

Commands live in sibling modules and are imported only when run (``submit`` must not pay
for rich, or for the other commands' definitions). Exit codes: 0 ok; 1 a waited-for job
failed, or a generic failure; 2 usage error; 3 the head refused the request; 4 no head
could be reached.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from hpcbatch import __version__
from hpcbatch.cli.common import global_options
from hpcbatch.client import HeadUnreachableError
from hpcbatch.errors import HpcbatchError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CLIENT_ERROR = 3
EXIT_UNREACHABLE = 4

# pyproject.toml's [head] extra, by import name: a compute node (hpcbatch[agent]) has none of them.
HEAD_PACKAGES = frozenset({"aiohttp", "psycopg", "yoyo", "jinja2", "prometheus_client", "sortedcontainers"})

# command name -> "module:attribute", imported on first use.
COMMANDS: dict[str, str] = {
    "submit": "hpcbatch.cli.submit:submit",
    "describe": "hpcbatch.cli.jobs:describe",
    "list": "hpcbatch.cli.jobs:list_jobs",
    "cancel": "hpcbatch.cli.jobs:cancel",
    "terminate": "hpcbatch.cli.jobs:terminate",
    "logs": "hpcbatch.cli.jobs:logs",
    "wait": "hpcbatch.cli.jobs:wait",
    "ce": "hpcbatch.cli.resources:ce",
    "queue": "hpcbatch.cli.resources:queue",
    "jobdef": "hpcbatch.cli.resources:jobdef",
    "policy": "hpcbatch.cli.policy:policy",
    "nodes": "hpcbatch.cli.nodes:nodes",
    "cluster": "hpcbatch.cli.cluster:cluster",
    "head": "hpcbatch.cli.cluster:head",
    "admin": "hpcbatch.cli.admin:admin",
    "whoami": "hpcbatch.cli.admin:whoami",
    "why": "hpcbatch.cli.why:why",
    "events": "hpcbatch.cli.watch:events",
    "console": "hpcbatch.cli.watch:console",
    "run": "hpcbatch.cli.run:run",
    "alloc": "hpcbatch.cli.run:alloc",
}


class LazyGroup(click.Group):
    """A group whose commands are imported from ``lazy`` ("module:attr") when needed."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


class RootGroup(LazyGroup):
    """Turns hpcbatch's errors into one line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HeadUnreachableError as e:
            click.echo(f"error: {e.message}", err=True)
            ctx.exit(EXIT_UNREACHABLE)
        except HpcbatchError as e:
            click.echo(f"error: {one_line(e.message)}", err=True)
            ctx.exit(EXIT_CLIENT_ERROR)
        except BrokenPipeError:
            # `hpcbatch list | head`: the reader has gone; exit quietly, as cat does.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_FAILED)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


@click.group(
    cls=RootGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@global_options
@click.version_option(__version__, "--version", prog_name="hpcbatch")
def cli() -> None:
    """AWS Batch for a cluster you own.

    \b
    Quick start:
      hpcbatch cluster up                 # a head and 4 nodes on this machine
      JOB=$(hpcbatch submit -- hostname)  # prints the job id
      hpcbatch wait $JOB && hpcbatch logs $JOB
    """


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    try:
        cli.main(args=argv, prog_name="hpcbatch", standalone_mode=True)
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else EXIT_FAILED)
    except ModuleNotFoundError as e:  # a head command on a host installed without the head's packages
        if (e.name or "").split(".")[0] not in HEAD_PACKAGES:
            raise
        print(f"error: this command runs the head, and {e.name} is not installed here "
              "(pip install 'hpcbatch[head]'; compute nodes install hpcbatch[agent])", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
