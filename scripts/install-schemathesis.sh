#!/usr/bin/env bash
# Installs Schemathesis (PyPI), the property-based tester the suite runs against
# docs/openapi.json, into a cache folder and prints the path of its `st` command on stdout.
# Idempotent: a second run only prints the path.
#
#   TICKETGATE_CACHE  where to install (default: ~/.cache/ticketgate)
set -euo pipefail

cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}"
venv="$cache/schemathesis-venv"
pin="schemathesis==4.32.5"
# anyio 4.15 compiles its own source with `ast` while being imported; inside Schemathesis's
# coverage phase that trips CPython 3.11.7's "AST constructor recursion depth mismatch"
# (a SystemError that fails the run). 4.14 imports plainly.
anyio_pin="anyio==4.14.0"

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
fi
installed() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [ ! -x "$venv/bin/st" ] || [ "$(installed schemathesis)" != "${pin#*==}" ] \
  || [ "$(installed anyio)" != "${anyio_pin#*==}" ]; then
  echo "install-schemathesis: pip install $pin $anyio_pin into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin" "$anyio_pin" >&2
fi
echo "$venv/bin/st"
