"""Run a click command so that every error it ends with is one line on stderr.

click's own answer to a usage error (a missing argument, a bad value, an unknown option or
command) is three lines: the usage synopsis, a "Try ... --help" hint and the error. In a log,
a CI job or a systemd journal that is two lines of noise before the one that says what is
wrong. edgemp prints ``error: <what is wrong> (see '<command> --help')`` instead, with
click's exit status (2 for usage, 1 otherwise); help, ``--version`` and normal output are untouched.
"""
from __future__ import annotations

import sys

import click


# click >= 8.2 answers a group run with no command with its help, raised as a usage error
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _line(message: str) -> str:
    return " ".join(message.split())  # click wraps some messages (choices, long values) over lines


def run(command: click.Command, prog_name: str, args: list[str] | None = None) -> None:
    """Run ``command`` as a console script named ``prog_name``; never returns (exits)."""
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except _NO_ARGS_IS_HELP as e:  # a group run bare: its help, as click shows it (exit 2)
        e.show()
        sys.exit(e.exit_code)
    except click.UsageError as e:
        where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        click.echo(f"error: {_line(e.format_message())}{where}", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:  # a bad file argument, an error a command raised through click
        click.echo(f"error: {_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except click.Abort:  # Ctrl-C or end of input at a prompt; click has ended the line already
        click.echo("error: aborted", err=True)
        sys.exit(1)
    # With standalone_mode off, click returns what the command returned (ignored, as click's
    # standalone mode ignores it) or the code of an Exit: only --help and --version raise one
    # here, with 0. A command that fails exits through sys.exit or an EdgempError instead.
    sys.exit(0 if code is None or not isinstance(code, int) else code)
