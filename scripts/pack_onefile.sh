#!/usr/bin/env bash
# Pack a one-folder build into one self-extracting file: scripts/onefile_stub.sh, then the folder as tar.gz.
# Usage: scripts/pack_onefile.sh DIST_DIR OUT_FILE   (DIST_DIR holds edgemp-serve/edgemp-serve)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dist="$1"
out="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -C "$dist" -czf "$work/payload.tar.gz" edgemp-serve
id="$(sha256sum "$work/payload.tar.gz" | cut -c1-16)"  # the cache folder's name: a new build never reuses an old copy
# The stub's length is fixed (a zero-padded offset), so the payload starts at a known byte.
stub() {
  sed -e "s/@PAYLOAD_OFFSET@/$1/" -e "s/@ID@/$id/" "$here/scripts/onefile_stub.sh"
}
size=$(stub 0000000000 | wc -c)
offset=$(printf '%010d' $((size + 1)))
{ stub "$offset"; cat "$work/payload.tar.gz"; } > "$out"
chmod +x "$out"
echo "built $out ($(du -h "$out" | cut -f1), self-extracting one-folder build, cache id $id)"
