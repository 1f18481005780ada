"""A click group whose old flat spelling still works: ``edgemp export CKPT -o m.onnx``.

``edgemp export`` and ``edgemp bench`` were once single commands with options for three
jobs each; they are now groups with one subcommand per job (``export graph|model|triton|hf``,
``bench graphs|server|text``), each building one typed config. Scripts, docs and CI written
for the flat commands keep working: when the first word is not a subcommand, the group's
``route`` function names the subcommand the arguments meant (and renames the few options
whose spelling changed). An option that belongs to another subcommand (in either spelling)
fails with one line naming the subcommand that takes it, instead of click's bare "no such option".
"""
from __future__ import annotations

from typing import Callable, Sequence

import click

from edgemp.errors import EdgempError

# (subcommand, arguments rewritten for it), from the arguments of the old flat command.
Route = Callable[[list[str]], tuple[str, list[str]]]


def option_value(args: Sequence[str], *names: str) -> str | None:
    """The value given to option ``names`` (``--opt V`` or ``--opt=V``), None when absent."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def has_option(args: Sequence[str], *names: str) -> bool:
    return any(a in names or any(a.startswith(n + "=") for n in names) for a in args)


def rename_option(args: list[str], old: str, new: str) -> list[str]:
    """``args`` with option ``old`` spelled ``new`` (both the ``--old V`` and ``--old=V`` forms)."""
    return [new if a == old else new + a[len(old):] if a.startswith(old + "=") else a for a in args]


def first_positional(args: Sequence[str], flags: frozenset[str]) -> str | None:
    """The first argument that is not an option or an option's value (``flags`` take no value)."""
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--":
            continue
        elif arg.startswith("-") and len(arg) > 1:
            skip = arg not in flags and "=" not in arg
        else:
            return arg
    return None


class RoutedGroup(click.Group):
    """A group that sends arguments without a subcommand name to the subcommand ``route`` picks."""

    def __init__(self, *args, route: Route, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.route = route

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] in ctx.help_option_names:
            return super().parse_args(ctx, args)
        if args and args[0] in self.commands:
            name, rest = args[0], list(args[1:])
        else:
            name, rest = self.route(list(args))
        self._refuse_foreign_options(ctx, name, rest)
        return super().parse_args(ctx, [name, *rest])

    def _refuse_foreign_options(self, ctx: click.Context, name: str, args: list[str]) -> None:
        """An option of a sibling subcommand is named with the spelling that takes it."""
        own = _option_names(self.commands[name])
        for arg in args:
            opt = arg.split("=", 1)[0]
            if not opt.startswith("--") or opt in own:
                continue
            takers = [other for other, cmd in self.commands.items() if opt in _option_names(cmd)]
            if takers:
                spelled = " or ".join(f"`{ctx.command_path} {t}`" for t in takers)
                raise EdgempError(f"{opt} is not an option of `{ctx.command_path} {name}`; it belongs to {spelled}")


def _option_names(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
