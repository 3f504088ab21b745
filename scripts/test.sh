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

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Many tests wait on protocol timers (auth deadline, heartbeat), so more threads than cores
# shortens the run without loading the CPUs.
cargo test --all-targets -- --test-threads 8
