#!/usr/bin/env bash
# Installs kubernetes-validate (PyPI; it carries the Kubernetes schemas, so it validates
# offline) into a cache folder and prints that venv's python on stdout. The deploy test runs
# it on deploy/kubernetes/. Idempotent: a second run only prints the path.
#
#   TICKETGATE_CACHE  where to install (default: ~/.cache/ticketgate)
set -euo pipefail

cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}"
venv="$cache/kubernetes-validate-venv"
pin="kubernetes-validate==1.37.0"

if [ ! -x "$venv/bin/python" ]; then
  mkdir -p "$cache"
  python3 -m venv "$venv" >&2
fi
installed() { "$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
if [ "$(installed kubernetes-validate)" != "${pin#*==}" ]; then
  echo "install-kubernetes-validate: pip install $pin into $venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin" >&2
fi
echo "$venv/bin/python"
