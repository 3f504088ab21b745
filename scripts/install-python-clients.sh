#!/usr/bin/env bash
# Installs the Python WebSocket client the tests use as an independent peer (PyPI's
# `websockets`, strict about RFC 6455 and RFC 7692) into a cache folder, and prints the path
# of that venv's python on stdout. Idempotent: a second run only prints the path.
#
#   TICKETGATE_CACHE  where to install (default: ~/.cache/ticketgate)
set -euo pipefail

cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}"
venv="$cache/python-clients-venv"
pin="websockets==15.0.1"

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
fi
installed() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [ "$(installed websockets)" != "${pin#*==}" ]; then
  echo "install-python-clients: pip install $pin into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin" >&2
fi
echo "$venv/bin/python"
