#!/bin/sh
# edgemp-serve (self-extracting): unpacks once per user into a private cache, then runs from it.
# (scripts/build_onefile.sh fills in the two values below and appends the payload: a tar.gz.)
set -e
payload_offset=@PAYLOAD_OFFSET@
id=@ID@
me=$(id -u)
if [ -n "${EDGEMP_SERVE_CACHE:-}" ]; then cache=$EDGEMP_SERVE_CACHE
elif [ -n "${XDG_CACHE_HOME:-}" ]; then cache=$XDG_CACHE_HOME/edgemp-serve
elif [ -n "${HOME:-}" ]; then cache=$HOME/.cache/edgemp-serve
else cache=${TMPDIR:-/tmp}/edgemp-serve-$me  # no home (a service): a shared directory, hence the check below
fi
if [ ! -d "$cache" ]; then  # (every fork costs a start ~2 ms: none here once the cache exists)
  case $cache in */?*) mkdir -p "${cache%/*}" 2>/dev/null || true ;; esac  # its parent, if it names one
  mkdir -m 700 "$cache" 2>/dev/null || true  # never chmod what exists: it may be someone else's (or a link)
fi
# What runs from the cache must be this user's own: a directory someone else owns or may write
# to (say, created in a shared /tmp first) could hold a planted server. ls -ldn: mode, links, uid.
stat_of() {  # sets mode and uid of $1 (in a function: set -- leaves the script's arguments alone)
  # shellcheck disable=SC2046
  set -- $(ls -ldn "$1" 2>/dev/null) missing x missing
  mode=$1 uid=$3
}
stat_of "$cache"
case "$mode" in
  d????[!w]??[!w]*) [ "$uid" = "$me" ] || { echo "edgemp-serve: cache $cache is owned by uid $uid, not $me; remove it or set EDGEMP_SERVE_CACHE" >&2; exit 1; } ;;
  *) echo "edgemp-serve: cache $cache is not a private directory (mode $mode); remove it or set EDGEMP_SERVE_CACHE" >&2; exit 1 ;;
esac
dir=$cache/$id
if [ ! -x "$dir/edgemp-serve/edgemp-serve" ]; then
  tmp=$(mktemp -d "$cache/.unpack.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  tail -c +"$payload_offset" "$0" | tar -xzf - -C "$tmp"
  if [ -e "$dir" ] && [ ! -x "$dir/edgemp-serve/edgemp-serve" ]; then  # a damaged copy: set it aside
    old=$(mktemp -d "$cache/.old.XXXXXX")
    mv "$dir" "$old/" 2>/dev/null || true
    rm -rf "$old"
  fi
  # mv renames tmp to dir, unless a concurrent first run made dir meanwhile: then it moves tmp
  # inside theirs, and that copy (ours) is dropped.
  mv "$tmp" "$dir" 2>/dev/null || true
  rm -rf "$dir/${tmp##*/}" "$tmp"
  trap - EXIT
  [ -x "$dir/edgemp-serve/edgemp-serve" ] || { echo "edgemp-serve: could not unpack into $dir" >&2; exit 1; }
fi
exec "$dir/edgemp-serve/edgemp-serve" "$@"
exit 1
