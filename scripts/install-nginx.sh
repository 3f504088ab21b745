#!/usr/bin/env bash
# Prints the path of an nginx binary for the tests (the cluster profile's proxy config is run
# for real in tests/api/cluster.rs). Uses nginx from PATH when there is one; otherwise unpacks
# Debian's nginx package into a cache folder without installing it, so no service starts and
# nothing outside the cache changes. Idempotent.
#
#   TICKETGATE_CACHE  where to unpack (default: ~/.cache/ticketgate)
set -euo pipefail

if command -v nginx >/dev/null 2>&1; then
  command -v nginx
  exit 0
fi
cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}/nginx"
bin="$cache/root/usr/sbin/nginx"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  cd "$cache"
  rm -f nginx_*.deb
  if ! apt-get download nginx >&2 2>/dev/null; then
    echo "install-nginx: apt-get update, then download nginx" >&2
    apt-get update -qq >&2
    apt-get download nginx >&2
  fi
  dpkg -x nginx_*.deb root
fi
if ! "$bin" -v >/dev/null 2>&1; then
  echo "install-nginx: $bin does not run; check its libraries with: ldd $bin" >&2
  exit 1
fi
echo "$bin"
