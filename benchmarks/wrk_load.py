"""A native closed-loop load generator for the 32-client rows: wrk (https://github.com/wg/wrk), when on PATH.

The Python load generator costs ~35 µs of CPU per request, on the same two cores as the
server it measures. wrk (C, one thread, one connection per client) costs a few µs, so its
rows show the server with a core nearly to itself. Each connection sends the next request
as soon as its answer arrives (a closed loop, as the Python clients do), cycling through the
same V2 binary bodies. Install: ``apt-get install wrk``; without it the rows are skipped.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA = """
local reqs = {}
local n = 0
init = function(args)
  for i = 1, %(count)d do
    local f = io.open("%(folder)s/" .. i .. ".bin", "rb"); local body = f:read("*a"); f:close()
    local h = io.open("%(folder)s/" .. i .. ".len", "r"); local length = h:read("*a"); h:close()
    reqs[i] = wrk.format("POST", "%(path)s", {["Content-Type"] = "application/octet-stream",
                                                ["Inference-Header-Content-Length"] = length}, body)
  end
end
request = function()
  n = n %% #reqs + 1
  return reqs[n]
end
"""
_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


@dataclass(frozen=True)
class WrkResult:
    rate: float  # requests/s
    p50_us: float | None
    p99_us: float | None
    failures: int  # non-2xx answers plus socket errors


def available() -> bool:
    return shutil.which("wrk") is not None


def write_script(folder: Path, path: str, bodies: list[bytes], header_lengths: list[str]) -> Path:
    """wrk's Lua script cycling through ``bodies`` (V2 binary, with their JSON header lengths)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (body, length) in enumerate(zip(bodies, header_lengths), 1):
        (folder / f"{i}.bin").write_bytes(body)
        (folder / f"{i}.len").write_text(length)
    script = folder / "v2.lua"
    script.write_text(LUA % {"count": len(bodies), "folder": folder, "path": path})
    return script


def run(url: str, connections: int, seconds: float, script: Path | None = None) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(seconds, 1):.0f}s", "--latency", url]
    if script is not None:
        cmd[1:1] = ["-s", str(script)]
    return parse(subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=seconds + 60).stdout)


def parse(out: str) -> WrkResult:
    """wrk's ``--latency`` report as a result."""
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {m.group(1): float(m.group(2)) * _UNITS[m.group(3)]
           for m in re.finditer(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    failures = sum(int(x) for x in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors:(.*)$", out, re.M)
    if socket_errors:
        failures += sum(int(x) for x in re.findall(r"\d+", socket_errors.group(1)))
    return WrkResult(rate, pct.get("50"), pct.get("99"), failures)


def steal_ticks(cpus: list[int]) -> int:
    """Clock ticks the hypervisor has taken from ``cpus`` so far (/proc/stat's steal column; 0 off Linux).

    On a virtual machine, a window in which the host ran someone else on these CPUs shows a
    p99 the server did not cause: the benchmarks print each window's share beside its figures.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0
    names = {f"cpu{c}" for c in cpus}
    return sum(int(line.split()[8]) for line in lines if line.split()[0] in names)


def stolen_share(ticks: int, seconds: float, cpus: int) -> float:
    """``ticks`` of steal as a share of ``cpus`` CPUs over ``seconds``."""
    return ticks / os.sysconf("SC_CLK_TCK") / (max(seconds, 1e-9) * max(cpus, 1))
