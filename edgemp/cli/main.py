"""The ``edgemp`` console script: a thin click layer over the library.

Subcommands import their heavy dependencies lazily inside the command body, so
``edgemp --help`` and runtime commands never import torch. A user error
(:class:`edgemp.errors.EdgempError`) prints one line and exits 1.
"""
from __future__ import annotations

import sys

import click

from edgemp import __version__
from edgemp.errors import EdgempError


class _EdgempGroup(click.Group):
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


def _register() -> None:
    # Each module defines click commands whose bodies import heavy dependencies lazily.
    from edgemp.cli import bench_cmds, data_cmds, export_cmds, quantize_cmds, runtime_cmds, serve, train_cmds, triton_cmds

    for mod in (data_cmds, train_cmds, export_cmds, quantize_cmds, runtime_cmds, serve, bench_cmds, triton_cmds):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def main() -> None:
    cli(prog_name="edgemp")


if __name__ == "__main__":
    main()
