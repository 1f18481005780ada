"""Every way a command line can be wrong ends in one line on stderr and a non-zero exit.

Run through the real console-script entry points (``edgemp`` and ``edgemp-serve``, as
``python -m``), because the folding of click's three-line usage answer happens there
(:mod:`edgemp.cli.oneline`); ``CliRunner`` would bypass it.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

EDGEMP = [sys.executable, "-m", "edgemp.cli.main"]
EDGEMP_SERVE = [sys.executable, "-c", "from edgemp.cli.serve import serve_main; serve_main()"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, code, names", [
    (["nosuch"], 2, ["No such command 'nosuch'", "'edgemp --help'"]),
    (["export"], 2, ["Missing argument 'CHECKPOINT'", "'edgemp export graph --help'"]),
    (["serve", "--port", "abc", "m.onnx"], 2, ["'--port'", "'abc' is not a valid integer", "'edgemp serve --help'"]),
    (["serve", "--log-level", "LOUD", "m.onnx"], 2, ["'--log-level'", "'LOUD'"]),
    (["serve", "no/such/model.onnx"], 2, ["'no/such/model.onnx' does not exist"]),
    (["predict", "--bogus"], 2, ["No such option", "--bogus"]),
    (["data", "--seed", "-1"], 2, ["'--seed'"]),
    (["bench", "graphs", "--seed", "x", "m.onnx"], 1, ["--seed"]),  # bench folds usage errors into its own (exit 1)
])
def test_a_bad_command_line_is_one_line(args, code, names):
    proc = _run([*EDGEMP, *args])
    assert proc.returncode == code, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and "Usage:" not in proc.stderr + proc.stdout


def test_edgemp_serve_alias_folds_usage_errors_too():
    proc = _run([*EDGEMP_SERVE, "--port", "abc", "m.onnx"])
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc
    assert "'abc' is not a valid integer" in lines[0] and "'edgemp-serve --help'" in lines[0]


def test_help_and_version_are_untouched():
    helped = _run([*EDGEMP, "serve", "--help"])
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: edgemp serve") and not helped.stderr
    short = _run([*EDGEMP_SERVE, "-h"])  # -h as under `edgemp`
    assert short.returncode == 0 and short.stdout.startswith("Usage: edgemp-serve"), short
    version = _run([*EDGEMP, "--version"])
    assert version.returncode == 0 and version.stdout.startswith("edgemp, version")
    bare = _run([*EDGEMP])  # no command: click's group help, as before
    assert "Usage: edgemp" in bare.stdout + bare.stderr and "error:" not in bare.stderr
    assert len((bare.stdout + bare.stderr).splitlines()) > 10
