#!/usr/bin/env bash
# Reproduces the figures in docs/BENCHMARKS.md: a release build, a throwaway mongod, a fresh
# gateway for each scenario, and the load generator. Everything stays on loopback.
#
#   N_CONNECT=20000 N_FANOUT=10000 N_IDLE=19000 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N_CONNECT=${N_CONNECT:-20000}
N_FANOUT=${N_FANOUT:-10000}
FANOUT_MESSAGES=${FANOUT_MESSAGES:-100}
FANOUT_RATE=${FANOUT_RATE:-20}
N_IDLE=${N_IDLE:-19000}
SECRET=bench-secret-0123456789abcdef0123456789
API_KEY=bench-api-key-0123456789

cargo build --release --bins --quiet
mongod_bin=$(bash scripts/install-mongod.sh)
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mongo_port=$(free_port)
mkdir -p "$work/db"
"$mongod_bin" --dbpath "$work/db" --port "$mongo_port" --bind_ip 127.0.0.1 --nounixsocket --quiet \
  --wiredTigerCacheSizeGB 0.5 --logpath "$work/mongod.log" &
mongod_pid=$!
gateway_pid=
cleanup() {
  [ -n "$gateway_pid" ] && kill "$gateway_pid" 2>/dev/null || true
  kill "$mongod_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# start_gateway <store: mongo|memory>: a fresh gateway; sets gateway_pid and gateway_url.
start_gateway() {
  [ -n "$gateway_pid" ] && { kill "$gateway_pid"; wait "$gateway_pid" 2>/dev/null || true; }
  local port store_env=()
  port=$(free_port)
  if [ "$1" = mongo ]; then
    store_env=(MONGODB_URI="mongodb://127.0.0.1:$mongo_port/?directConnection=true" MONGODB_DATABASE="bench_$RANDOM")
  fi
  env -i PATH="$PATH" BIND_ADDR="127.0.0.1:$port" JWT_SECRET="$SECRET" API_KEY="$API_KEY" \
    TICKET_RATE_PER_MIN=100000000 UPGRADE_RATE_PER_MIN=100000000 MAX_CONNECTIONS_PER_USER=100000 \
    RUST_LOG="${GATEWAY_LOG:-info}" "${store_env[@]}" target/release/ticketgate 2>"$work/gateway.log" &
  gateway_pid=$!
  gateway_url="http://127.0.0.1:$port"
  for _ in $(seq 100); do curl -fsS "$gateway_url/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "the gateway did not become ready:" >&2; cat "$work/gateway.log" >&2; exit 1
}

load() { target/release/ticketgate-load --url "$gateway_url" --secret "$SECRET" --gateway-pid "$gateway_pid" "$@"; }

echo "# $(date -u +%F) on $(nproc) cores; $(uname -r)"
start_gateway mongo
echo "## connect, MongoDB store"; load connect --connections "$N_CONNECT" --concurrency 200
start_gateway memory
echo "## connect, in-process store"; load connect --connections "$N_CONNECT" --concurrency 200
start_gateway mongo
echo "## fanout"; load fanout --connections "$N_FANOUT" --concurrency 200 --messages "$FANOUT_MESSAGES" \
  --rate "$FANOUT_RATE" --size 100 --api-key "$API_KEY"
start_gateway mongo
echo "## idle"; load idle --connections "$N_IDLE" --concurrency 200 --hold-secs 20
