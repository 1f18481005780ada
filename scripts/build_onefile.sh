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
# the binary). The target needs only /bin/sh, tail, tar and gzip (busybox has them).
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
tar -C "$work/dist" -czf "$work/payload.tar.gz" edgemp-serve
id="$(sha256sum "$work/payload.tar.gz" | cut -c1-16)"
# The stub's length is fixed (a padded offset), so the payload starts at a known byte.
stub() {
  cat <<STUB
#!/bin/sh
# edgemp-serve (self-extracting): unpacks once per user into a cache, then runs from it.
set -e
payload_offset=$1
id=$id
cache="\${EDGEMP_SERVE_CACHE:-\${XDG_CACHE_HOME:-\${HOME:-/tmp}/.cache}/edgemp-serve}"
dir="\$cache/\$id"
if [ ! -x "\$dir/edgemp-serve/edgemp-serve" ]; then
  mkdir -p -m 700 "\$cache"
  tmp="\$(mktemp -d "\$cache/.unpack.XXXXXX")"
  tail -c +"\$payload_offset" "\$0" | tar -xzf - -C "\$tmp"
  mv "\$tmp" "\$dir" 2>/dev/null || rm -rf "\$tmp"  # a concurrent first run won: use its copy
fi
exec "\$dir/edgemp-serve/edgemp-serve" "\$@"
exit 1
STUB
}
size=$(stub 0000000000 | wc -c)
offset=$(printf '%010d' $((size + 1)))
{ stub "$offset"; cat "$work/payload.tar.gz"; } > "$out/edgemp-serve"
chmod +x "$out/edgemp-serve"
echo "built $out/edgemp-serve ($(du -h "$out/edgemp-serve" | cut -f1), self-extracting one-folder build, cache id $id)"
