"""benchmarks/bench_triton.py runs end to end: both servers come up on one repository, every level gets
answers from both, and both exit cleanly on SIGTERM (it once broke unnoticed when `edgemp serve` began
refusing python-backend repositories).

Needs the Triton backend environment that ``scripts/build_triton_env.sh`` builds (the README's test command
builds it); skipped without it. ~40 s. Each level runs 1.5 s: Triton's python backend can hold every
request in flight for ~0.5 s, which once left a 0.5 s window with no finished request (CI, 2026-12-01).
"""
from __future__ import annotations

import re
import subprocess
import sys

from server_utils import ROOT, needs_triton_server

pytestmark = needs_triton_server()


def test_bench_triton_runs_both_servers_at_every_level(tmp_path):
    out = tmp_path / "triton.md"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_triton.py"), "--rounds", "1",
                          "--duration", "1.5", "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    text = out.read_text()
    rows = re.findall(r"^\| (\d+) \| (edgemp serve|Triton \(python backend\)) \| ([\d,]+) \|.*\| (\d+) \|$", text, re.M)
    assert {(level, server) for level, server, _, _ in rows} == {
        (level, server) for level in ("1", "8", "32") for server in ("edgemp serve", "Triton (python backend)")}
    assert all(int(graphs.replace(",", "")) > 0 and errors == "0" for _, _, graphs, errors in rows)
    assert "Exit codes after SIGTERM: {'edgemp serve': 0, 'Triton (python backend)': 0}" in text
