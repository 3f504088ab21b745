#!/usr/bin/env bash
# A/B of two gateway builds in one run, alternated so that both see the same machine (and the
# same host steal, on a shared VM): each round runs the chosen scenarios of scripts/bench.sh
# once with A, then once with B.
#
#   scripts/bench-ab.sh /tmp/old/ticketgate target/release/ticketgate
#   ROUNDS=3 SCENARIOS="connect fanout" scripts/bench-ab.sh A_BIN B_BIN
#   SWAP=load scripts/bench-ab.sh /tmp/old/ticketgate-load target/release/ticketgate-load
#                                      # two builds of the load generator, one gateway
#
# Build A from an earlier commit in a worktree of its own, for example:
#   git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release -p ticketgate)
set -euo pipefail
cd "$(dirname "$0")/.."
a=$(realpath "$1")
b=$(realpath "$2")
export SCENARIOS=${SCENARIOS:-"connect fanout idle channels-memory channels-idle"}
for round in $(seq "${ROUNDS:-2}"); do
  for side in A B; do
    bin=$a
    [ "$side" = B ] && bin=$b
    echo "### round $round, $side: $bin"
    if [ "${SWAP:-gateway}" = load ]; then
      LOAD_BIN="$bin" bash scripts/bench.sh
    else
      GATEWAY_BIN="$bin" bash scripts/bench.sh
    fi
  done
done
