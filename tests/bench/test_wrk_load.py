"""benchmarks/wrk_load.py reads wrk's report right: rate, p50/p99 in µs, and every failed request."""
from __future__ import annotations

import sys

from server_utils import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import wrk_load  # noqa: E402

CLEAN = """Running 5s test @ http://127.0.0.1:18123
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.33ms  551.45us  10.70ms   87.25%
    Req/Sec     9.64k     1.20k   11.28k    58.00%
  Latency Distribution
     50%    3.05ms
     75%    3.70ms
     90%    3.95ms
     99%    5.07ms
  48000 requests in 5.01s, 14.42MB read
Requests/sec:   9590.31
Transfer/sec:      2.88MB
"""


def test_a_clean_report():
    r = wrk_load.parse(CLEAN)
    assert (r.rate, r.p50_us, r.p99_us, r.failures) == (9590.31, 3050.0, 5070.0, 0)


def test_failures_are_counted_and_units_read():
    out = CLEAN.replace("     50%    3.05ms", "     50%  850.00us").replace("     99%    5.07ms", "     99%    1.20s")
    out = out.replace("Requests/sec:", "  Socket errors: connect 0, read 2, write 0, timeout 5\n"
                                       "  Non-2xx or 3xx responses: 7\nRequests/sec:")
    r = wrk_load.parse(out)
    assert (r.p50_us, r.p99_us, r.failures) == (850.0, 1.2e6, 14)


def test_the_script_cycles_through_every_body(tmp_path):
    script = wrk_load.write_script(tmp_path / "wrk", "/v2/models/m/infer", [b"a", b"bb"], ["1", "2"])
    text = script.read_text()
    assert "for i = 1, 2 do" in text and (tmp_path / "wrk" / "2.bin").read_bytes() == b"bb"
