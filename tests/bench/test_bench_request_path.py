"""benchmarks/bench_request_path.py runs the fast path (and gRPC) in process and reports the loop's work per request."""
from __future__ import annotations

import re
import subprocess
import sys

from server_utils import ROOT


def test_the_script_serves_every_request_and_reports_the_loop_time():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_request_path.py"), "--rounds", "20"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = dict(re.findall(r"^\| (take|answer|loop thread CPU)[^|]*\| ([\d.]+) \|$", out.stdout, re.M))
    assert set(rows) == {"take", "answer", "loop thread CPU"}, out.stdout
    take, answer, loop = (float(rows[k]) for k in ("take", "answer", "loop thread CPU"))
    assert take > 0 and answer > 0 and abs(take + answer - loop) < 0.2


def test_both_protocols_side_by_side():
    """--protocol both: every gRPC call is answered OK too (the script stops on any other answer)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_request_path.py"), "--rounds", "20",
                          "--protocol", "both"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.findall(r"^\| (take|answer|loop thread CPU)[^|]*\| ([\d.]+) \| ([\d.]+) \|$", out.stdout, re.M)
    rows = {name: (float(http), float(grpc)) for name, http, grpc in found}
    assert set(rows) == {"take", "answer", "loop thread CPU"}, out.stdout
    for k in (0, 1):  # http, grpc
        take, answer, loop = (rows[r][k] for r in ("take", "answer", "loop thread CPU"))
        assert take > 0 and answer > 0 and abs(take + answer - loop) < 0.2


def test_a_lone_request_reports_its_inline_model_run_apart():
    """--clients 1: each request is alone and runs inline on the loop; the table splits the model's
    run (from the batcher's statistics) from the rest of the loop's work."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_request_path.py"), "--rounds", "40",
                          "--protocol", "both", "--clients", "1"], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {name: (float(http), float(grpc)) for name, http, grpc in re.findall(
        r"^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \|$", out.stdout, re.M)}
    loop, model = rows["loop thread CPU, all"], rows["of which the model's run, inline"]
    rest = rows["loop thread CPU less the model's run"]
    for k in (0, 1):
        assert 0 < model[k] < loop[k] and abs(loop[k] - model[k] - rest[k]) < 0.2, out.stdout
