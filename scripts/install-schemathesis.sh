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

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
fi
if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/pip" show --quiet schemathesis >/dev/null 2>&1 \
  || [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))')" != "${pin#*==}" ]; then
  echo "install-schemathesis: pip install $pin into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin" >&2
fi
echo "$venv/bin/st"
