"""The self-extracting stub of the one-file `edgemp-serve`, on a stand-in payload (seconds, no build).

The stub runs whatever sits in its cache, so the cache must be the user's own: these check
that it refuses a directory someone else owns or may write to (a planted server), a symlink,
and a shared /tmp directory made first by another user; that concurrent first runs leave one
copy; and that a damaged copy is replaced instead of failing every later start.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = '#!/bin/sh\necho "REAL edgemp-serve $*"\n'

pytestmark = pytest.mark.skipif(shutil.which("sh") is None or shutil.which("tar") is None, reason="needs sh and tar")


@pytest.fixture()
def binary(tmp_path: Path) -> Path:
    """A stand-in server packed the way scripts/build_onefile.sh packs the real one."""
    server = tmp_path / "dist" / "edgemp-serve" / "edgemp-serve"
    server.parent.mkdir(parents=True)
    server.write_text(SERVER)
    server.chmod(0o755)
    out = tmp_path / "edgemp-serve"
    subprocess.run(["bash", str(ROOT / "scripts" / "pack_onefile.sh"), str(tmp_path / "dist"), str(out)],
                   check=True, capture_output=True)
    return out


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_CACHE_HOME", "EDGEMP_SERVE_CACHE", "TMPDIR")}
    env.update(values)
    return env


def _run(binary: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), "--port", "8000"], capture_output=True, text=True, env=env, timeout=60)


def _copies(cache: Path) -> list[Path]:
    """Every unpacked server under ``cache``, however deep (a nested copy is one too many)."""
    return sorted(p for p in cache.rglob("edgemp-serve") if p.is_file())


def test_unpacks_once_then_runs_from_the_cache(binary, tmp_path):
    cache = tmp_path / "cache"
    first = _run(binary, _env(EDGEMP_SERVE_CACHE=str(cache)))
    assert first.returncode == 0 and first.stdout == "REAL edgemp-serve --port 8000\n", first
    [copy] = _copies(cache)
    stamp = copy.stat().st_mtime_ns
    assert _run(binary, _env(EDGEMP_SERVE_CACHE=str(cache))).stdout.startswith("REAL")
    assert _copies(cache) == [copy] and copy.stat().st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_concurrent_first_runs_leave_one_copy(binary, tmp_path):
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(6) as pool:
        runs = list(pool.map(lambda _: _run(binary, _env(EDGEMP_SERVE_CACHE=str(cache))), range(6)))
    assert all(r.returncode == 0 and r.stdout.startswith("REAL") for r in runs), runs
    assert len(_copies(cache)) == 1, _copies(cache)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]


def test_a_damaged_copy_is_replaced(binary, tmp_path):
    cache = tmp_path / "cache"
    _run(binary, _env(EDGEMP_SERVE_CACHE=str(cache)))
    [copy] = _copies(cache)
    copy.unlink()  # a cache cleaner, an interrupted rm: the folder is there, the server is not
    again = _run(binary, _env(EDGEMP_SERVE_CACHE=str(cache)))
    assert again.returncode == 0 and again.stdout.startswith("REAL"), again
    assert len(_copies(cache)) == 1


@pytest.mark.parametrize("kind", ["world_writable", "group_writable", "symlink"])
def test_a_cache_others_may_write_to_is_refused(binary, tmp_path, kind):
    cache = tmp_path / "cache"
    _run(binary, _env(EDGEMP_SERVE_CACHE=str(cache)))
    if kind == "symlink":
        real = tmp_path / "elsewhere"
        cache.rename(real)
        cache.symlink_to(real)
    else:
        cache.chmod(0o777 if kind == "world_writable" else 0o770)
    refused = _run(binary, _env(EDGEMP_SERVE_CACHE=str(cache)))
    assert refused.returncode == 1 and refused.stdout == "", refused
    assert refused.stderr.count("\n") == 1 and "not a private directory" in refused.stderr, refused.stderr


def test_without_a_home_the_cache_is_a_private_directory_in_tmp(binary, tmp_path):
    shared = tmp_path / "tmp"
    shared.mkdir()
    run = _run(binary, _env(TMPDIR=str(shared)))
    assert run.returncode == 0 and run.stdout.startswith("REAL"), run
    [cache] = shared.iterdir()
    assert cache.name == f"edgemp-serve-{os.getuid()}" and cache.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to make another user's directory")
def test_a_server_planted_by_another_user_never_runs(binary, tmp_path):
    """The reviewer's attack: with no HOME, another local user makes the shared cache folder
    first and plants a server where the (public) cache id says it will be looked for."""
    shared = tmp_path / "tmp"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    cache = shared / f"edgemp-serve-{os.getuid()}"
    cache_id = next(line for line in binary.read_bytes().split(b"\n") if line.startswith(b"id=")).decode()[3:]
    planted = cache / cache_id / "edgemp-serve" / "edgemp-serve"
    planted.parent.mkdir(parents=True)
    planted.write_text('#!/bin/sh\necho "PLANTED"\n')
    planted.chmod(0o755)
    for p in (cache, cache / cache_id, planted.parent, planted):
        os.chown(p, 65534, 65534)
    cache.chmod(0o700)
    refused = _run(binary, _env(TMPDIR=str(shared)))
    assert refused.returncode == 1 and "PLANTED" not in refused.stdout, refused
    assert "owned by uid 65534" in refused.stderr, refused.stderr
