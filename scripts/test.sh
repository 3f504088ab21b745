#!/usr/bin/env bash
# Runs every check and test on a fresh machine, installing what they need first.
# This is the command the README gives and the one CI (.ci/run) calls.
#
#   MONGODB_URI   use this MongoDB instead of a throwaway mongod (each test makes its own database)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MONGODB_URI:-}" ]; then
  # The integration tests start their own throwaway mongod from this binary.
  MONGOD_BIN="$(bash scripts/install-mongod.sh)"
  export MONGOD_BIN
  echo "test.sh: using $MONGOD_BIN" >&2
fi

# The cluster test runs the compose profile's nginx config for real: unpack Debian's nginx
# into the cache now (the test finds it through the same script).
echo "test.sh: using nginx $(bash scripts/install-nginx.sh)" >&2
# The OpenAPI test runs Schemathesis (PyPI) against the document and a live gateway.
echo "test.sh: using schemathesis $(bash scripts/install-schemathesis.sh)" >&2
# The compression handshake is tried with Python's websockets (PyPI) as an independent peer.
echo "test.sh: using python clients $(bash scripts/install-python-clients.sh)" >&2
# The Python client (clients/python) is tested with pytest, typed with mypy and built as a
# wheel, from a venv of its own.
echo "test.sh: using python client tools $(bash scripts/install-python-client-dev.sh)" >&2
# The Kubernetes manifests (deploy/kubernetes) are validated offline with kubernetes-validate.
echo "test.sh: using kubernetes-validate $(bash scripts/install-kubernetes-validate.sh)" >&2
# The Debian package is built with cargo-deb (crates.io) and its contents checked.
echo "test.sh: using cargo-deb $(bash scripts/install-cargo-deb.sh)" >&2

# The browser test drives Debian's Chromium (browser downloads do not work here); the client
# tests need Node and the client's two npm dependencies.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "test.sh: installing chromium" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  else
    echo "test.sh: the browser test needs Chromium: sudo apt-get install chromium" >&2
    exit 1
  fi
fi
if ! command -v node >/dev/null 2>&1; then
  echo "test.sh: the client tests need Node.js 20 or later (apt-get install nodejs)" >&2
  exit 1
fi
(cd client && npm ci --no-audit --no-fund --loglevel=error)

# Every process the tests start carries this marker (tests that clear a child's environment
# pass it on), so whatever is left at the end can be found and named.
TICKETGATE_TEST_RUN="$$-$(date +%s%N)"
export TICKETGATE_TEST_RUN

# Processes other than this script that carry the marker.
leftovers() {
  local p
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" = "$$" ] && continue
    if { tr '\0' '\n' < "$p/environ"; } 2>/dev/null | grep -qx "TICKETGATE_TEST_RUN=$TICKETGATE_TEST_RUN"; then
      echo "  pid ${p#/proc/}: $({ tr '\0' ' ' < "$p/cmdline"; } 2>/dev/null | cut -c1-120)"
    fi
  done
}

# Tests end every process they start; after the suites, nothing that carries the marker may
# still run (a few seconds' grace for processes still exiting).
check_nothing_left() {
  local left
  for _ in $(seq 50); do
    left=$(leftovers)
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  echo "test.sh: the tests left processes running:" >&2
  echo "$left" >&2
  return 1
}

cargo fmt --all -- --check
# The gateway alone (its production build, without the tests' `testing` feature), then the
# whole workspace.
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The criterion benchmarks, once each in test mode, so they keep working (their harness takes
# no --test-threads). Then every test suite, last, so its summary closes the run.
cargo test --bench hot_paths --quiet
# Many tests wait on protocol timers (auth deadline, heartbeat), so more threads than cores
# shortens the run without loading the CPUs.
status=0
cargo test --workspace --lib --bins --tests -- --test-threads 8 || status=$?
check_nothing_left || status=1
exit "$status"
