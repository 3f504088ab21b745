#!/usr/bin/env bash
# The scaling simulation of docs/SCALING.md: 1, 2, 4, 8 and 16 gateway nodes on this machine
# against one single-node replica set, subscribers on node 1 only, publications at a fixed
# rate through the last node; per run, mongod's and each node's CPU per published event,
# publish latency and delivery lag. Writes docs/scaling/results.jsonl, docs/scaling/table.md
# and docs/scaling/curves.svg.
#
#   scripts/scale-sim.sh                                   # this build, every node count
#   scripts/scale-sim.sh --design old=/tmp/old/ticketgate --design new=target/release/ticketgate
#                                                          # an A/B, alternated within each count
#   scripts/scale-sim.sh --nodes 1,8 --rate 300 --secs 8   # a quicker look
#   scripts/scale-sim.sh --perf /tmp/profiles              # also profile mongod and the nodes in
#                                                          # extra runs at the largest count (perf -e cpu-clock)
#   SKIP_BUILD=1 scripts/scale-sim.sh …                    # the binaries are given
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p ticketgate -p ticketgate-load --quiet
mongod_bin=$(bash scripts/install-mongod.sh)
venv="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}/mongod-venv"
# replSetInitiate needs a client; pymongo in mongod's venv is the smallest one.
"$venv/bin/pip" install --quiet --disable-pip-version-check pymongo==4.10.1
exec "$venv/bin/python" scripts/scale_sim.py --mongod "$mongod_bin" "$@"
