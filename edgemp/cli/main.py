"""The ``edgemp`` console script: a thin click layer over the library.

Subcommands import their heavy dependencies lazily inside the command body, so
``edgemp --help`` and runtime commands never import torch. A user error
(:class:`edgemp.errors.EdgempError`) prints one line and exits 1; a usage error (a missing
argument, a bad value) one line too, exit 2 (:mod:`edgemp.cli.oneline`).
"""
from __future__ import annotations

import importlib
import sys

import click

from edgemp import __version__
from edgemp.errors import EdgempError


# Command name -> the module under edgemp.cli that defines it. Modules are imported when one of their
# commands is asked for, so `edgemp serve` does not pay for importing every other command (~20 ms of
# every server start); `edgemp --help` still lists them all.
COMMAND_MODULES = {
    "data": "data_cmds",
    "train": "train_cmds", "evaluate": "train_cmds",
    "export": "export_cmds", "inspect": "export_cmds",
    "quantize": "quantize_cmds", "optimize": "quantize_cmds", "engine": "quantize_cmds",
    "predict": "runtime_cmds",
    "serve": "serve",
    "bench": "bench_cmds",
    "triton": "triton_cmds",
}


class _EdgempGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMAND_MODULES:
            module = importlib.import_module(f"edgemp.cli.{COMMAND_MODULES[name]}")
            for cmd in module.COMMANDS:
                self.add_command(cmd)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgempError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_EdgempGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgemp")
def cli() -> None:
    """edgemp: message-passing neural networks at the edge (export, run, serve, bench)."""


def main() -> None:
    from edgemp.cli import oneline

    oneline.run(cli, "edgemp")


if __name__ == "__main__":
    main()
