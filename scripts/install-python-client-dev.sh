#!/usr/bin/env bash
# Installs what the Python client's checks need (clients/python): its two dependencies
# (websockets, httpx), pytest, mypy, pymongo (its tests set fail points), and setuptools to
# build its wheel offline, into a cache
# folder; prints that venv's python on stdout. Idempotent: a second run only prints the path.
#
#   TICKETGATE_CACHE  where to install (default: ~/.cache/ticketgate)
set -euo pipefail

cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}"
venv="$cache/python-client-dev-venv"
pins=("websockets==15.0.1" "httpx==0.28.1" "pytest==8.3.5" "mypy==1.15.0" "setuptools==78.1.0" "wheel==0.45.1" "pymongo==4.15.5")

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
fi
installed() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
missing=()
for pin in "${pins[@]}"; do
  [ "$(installed "${pin%%==*}")" = "${pin#*==}" ] || missing+=("$pin")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-python-client-dev: pip install ${missing[*]} into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${missing[@]}" >&2
fi
echo "$venv/bin/python"
