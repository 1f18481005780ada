#!/usr/bin/env bash
# Build `edgemp-serve` as one self-contained executable for an edge image.
# Usage: scripts/build_onefile.sh [OUT_DIR] [--pyinstaller-onefile]   -> OUT_DIR/edgemp-serve (default: dist/)
#
# Default: a PyInstaller one-folder build, packed into one self-extracting file. The first run
# unpacks it once into a per-user cache (named by the payload's hash, moved into place
# atomically); every later run execs the cached server directly, so it starts as fast as a
# venv. PyInstaller's own --onefile (kept for comparison with --pyinstaller-onefile) unpacks
# itself into a fresh temporary directory on every start instead.
# The build venv gets the base install plus the grpc extra (protobuf, hpack; no torch, so nothing of it can end up in
# the binary). The target needs only /bin/sh, id, ls, mkdir, mktemp, dirname, tail, tar and gzip (busybox has
# them). The stub the file starts with is scripts/onefile_stub.sh (packed by scripts/pack_onefile.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-dist}")"
mode="${2:-}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$here[grpc]" 'pyinstaller>=6'
printf 'from edgemp.cli.serve import serve_main\n\nif __name__ == "__main__":\n    serve_main()\n' > "$work/edgemp_serve.py"
cd "$work"
common=(--name edgemp-serve --log-level WARN --collect-binaries onnxruntime --collect-submodules edgemp.runtime
        --collect-submodules edgemp.cli --hidden-import hpack --noconfirm)
mkdir -p "$out"
if [ "$mode" = "--pyinstaller-onefile" ]; then
  "$work/venv/bin/pyinstaller" --onefile --distpath "$out" "${common[@]}" "$work/edgemp_serve.py"
  echo "built $out/edgemp-serve ($(du -h "$out/edgemp-serve" | cut -f1), PyInstaller --onefile)"
  exit 0
fi
"$work/venv/bin/pyinstaller" --onedir --distpath "$work/dist" "${common[@]}" "$work/edgemp_serve.py"
bash "$here/scripts/pack_onefile.sh" "$work/dist" "$out/edgemp-serve"
