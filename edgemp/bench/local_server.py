"""Start-up helpers for servers the benchmarks (and tests) run on 127.0.0.1: a free port, and
waiting until ``/v2/health/ready`` answers 200 or the process dies (stdlib only)."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

from edgemp.errors import EdgempError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(base_url: str, proc: subprocess.Popen, timeout_s: float = 120.0, poll_s: float = 0.1) -> float:
    """Seconds until ``base_url``/v2/health/ready answered 200; an error if ``proc`` exits or time runs out."""
    start = time.monotonic()
    url = f"{base_url.rstrip('/')}/v2/health/ready"
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise EdgempError(f"the server exited with code {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except OSError:  # not listening yet, or 503 while it loads models
            pass
        time.sleep(poll_s)
    raise EdgempError(f"{url} was not ready within {timeout_s:.0f} s")
