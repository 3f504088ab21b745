#!/usr/bin/env bash
# Reproduces the figures in docs/BENCHMARKS.md: a release build, a throwaway mongod (a
# single-node replica set, as MongoDB runs in production), fresh gateways for each scenario,
# and the load generator. Everything stays on loopback.
#
#   N_CONNECT=20000 N_FANOUT=10000 N_IDLE=19000 scripts/bench.sh
#   SCENARIOS="cluster" scripts/bench.sh        # only some: connect connect-jti fanout idle cluster
#                                               # idle-cluster compression channels channels-idle
#                                               # channels-memory channels-cluster channels-bus
#                                               # presence history jitter restart-storm rpc
#                                               # lifecycle sse outbox floor
#   PERF_DIR=/tmp/profiles scripts/bench.sh     # also record a CPU profile of the gateways per
#                                               # run (perf record -e cpu-clock -g; perf report -i …)
#   GATEWAY_BIN=/tmp/old/ticketgate scripts/bench.sh  # run another build of the gateway (an A/B
#                                               # against an earlier commit)
#   LOAD_BIN=/tmp/old/ticketgate-load scripts/bench.sh  # the same for the load generator
set -euo pipefail
cd "$(dirname "$0")/.."

SCENARIOS=${SCENARIOS:-"connect fanout idle cluster idle-cluster floor"}
N_CONNECT=${N_CONNECT:-20000}
N_FANOUT=${N_FANOUT:-10000}
FANOUT_MESSAGES=${FANOUT_MESSAGES:-100}
FANOUT_RATE=${FANOUT_RATE:-20}
N_IDLE=${N_IDLE:-19000}
# Idle connections over three gateway processes (and as many generator processes as needed).
N_IDLE_CLUSTER=${N_IDLE_CLUSTER:-50000}
# Cross-node: connections on nodes 1 and 2, broadcasts published through node 3.
N_CROSS=${N_CROSS:-200}
CROSS_MESSAGES=${CROSS_MESSAGES:-500}
CROSS_RATE=${CROSS_RATE:-50}
# WS_COMPRESSION off and on: fan-out of 1.6 KB messages of words, and idle memory.
N_COMPRESS=${N_COMPRESS:-10000}
COMPRESS_SIZE=${COMPRESS_SIZE:-1600}
# Channels: N_CHAN connections x CHAN_SUBSCRIBE subscriptions over CHAN_COUNT channels, then
# publications to random channels at CHAN_RATE/s for CHAN_SECS.
N_CHAN=${N_CHAN:-10000}
CHAN_SUBSCRIBE=${CHAN_SUBSCRIBE:-10}
CHAN_COUNT=${CHAN_COUNT:-1000}
CHAN_RATE=${CHAN_RATE:-500}
CHAN_SECS=${CHAN_SECS:-60}
# Cross-node channels: subscribers on nodes 1 and 2, publications through node 3.
N_CHAN_CROSS=${N_CHAN_CROSS:-200}
CHAN_CROSS_RATE=${CHAN_CROSS_RATE:-1000}
# Bus throughput: few connections, as many broadcasts as the bus takes.
BUS_MESSAGES=${BUS_MESSAGES:-60000}
BUS_RATE=${BUS_RATE:-20000}
SECRET=bench-secret-0123456789abcdef0123456789
API_KEY=bench-api-key-0123456789

# SKIP_BUILD=1: the binaries are given (GATEWAY_BIN, LOAD_BIN), and the tree may be mid-edit.
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --workspace --bins --quiet
mongod_bin=$(bash scripts/install-mongod.sh)
venv="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}/mongod-venv"
# replSetInitiate needs a client; pymongo in mongod's venv is the smallest one.
"$venv/bin/pip" install --quiet --disable-pip-version-check pymongo==4.10.1
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mongo_port=$(free_port)
mongo_uri="mongodb://127.0.0.1:$mongo_port/?directConnection=true${MONGO_URI_OPTIONS:-}"
mkdir -p "$work/db"
# The load generator's channels (load:c<n>) need their namespace declared.
printf '[[channels.namespaces]]\nname = "load"\n' >"$work/channels.toml"
printf '[[channels.namespaces]]\nname = "load"\npresence = true\n' >"$work/presence.toml"
printf '[[channels.namespaces]]\nname = "load"\nhistory_size = %s\nhistory_ttl_secs = 600\n' "${HISTORY_SIZE:-100}" >"$work/history.toml"
# mongod keeps its own default WiredTiger cache (half of the RAM less 1 GB), as a deployment
# does; MONGO_CACHE_GB sets another. With 0.5 GB (until 2026-12-01) WiredTiger wrote the hot
# history documents' dirty pages out every second or two, stalling the appends to them.
# mongod keeps no snapshot history, as docker-compose.yml and the README recommend
# (ticketgate makes no point-in-time reads): with mongod's default of 300 s, every ~10,000
# appends the page holding the hot history documents was evicted with all their old versions,
# stalling the appends 50 to 100 ms (docs/BENCHMARKS.md, "Snapshot history").
# MONGO_SNAPSHOT_WINDOW_SECS=300 measures mongod's default.
"$mongod_bin" --dbpath "$work/db" --port "$mongo_port" --bind_ip 127.0.0.1 --nounixsocket --quiet \
  --replSet rs0 ${MONGO_CACHE_GB:+--wiredTigerCacheSizeGB "$MONGO_CACHE_GB"} --logpath "$work/mongod.log" \
  --setParameter minSnapshotHistoryWindowInSeconds="${MONGO_SNAPSHOT_WINDOW_SECS:-0}" &
mongod_pid=$!
gateway_pids=()
cleanup() {
  stop_gateways
  kill "$mongod_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  # KEEP_WORK=1 keeps the gateways' and mongod's logs for a look afterwards.
  if [ -n "${KEEP_WORK:-}" ]; then echo "logs kept in $work" >&2; else rm -rf "$work"; fi
}
stop_gateways() {
  for pid in "${gateway_pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  # Gateways started again by their launch script (restart-storm) are not this shell's children.
  for file in "$work"/gateway*.pid; do [ -f "$file" ] && kill "$(cat "$file")" 2>/dev/null || true; rm -f "$file"; done
  gateway_pids=()
  gateway_urls=()
}
trap cleanup EXIT
"$venv/bin/python" - "$mongo_port" <<'PY'
import sys, time, pymongo
port = int(sys.argv[1])
client = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", serverSelectionTimeoutMS=30000)
client.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
for _ in range(300):
    if client.admin.command("hello").get("isWritablePrimary"):
        sys.exit(0)
    time.sleep(0.1)
sys.exit("mongod did not become primary")
PY

# start_gateways <store: mongo|memory> <count>: fresh gateways sharing one database; sets
# gateway_pids and gateway_urls.
start_gateways() {
  stop_gateways
  local store_env=() database="bench_$RANDOM" port i
  # GATEWAY_ENV: extra settings for this start, e.g. "WS_COMPRESSION=true".
  read -r -a extra_env <<<"${GATEWAY_ENV:-}"
  if [ "$1" = mongo ]; then
    store_env=(MONGODB_URI="$mongo_uri" MONGODB_DATABASE="$database")
  fi
  for i in $(seq "$2"); do
    port=$(free_port)
    local command=(env -i PATH="$PATH" BIND_ADDR="127.0.0.1:$port" JWT_SECRET="$SECRET" API_KEY="$API_KEY"
      TICKET_RATE_PER_MIN=100000000 UPGRADE_RATE_PER_MIN=100000000 MAX_CONNECTIONS_PER_USER=100000
      NODE_NAME="bench$i" RUST_LOG="${GATEWAY_LOG:-info}" CONFIG_FILE="$work/channels.toml"
      "${store_env[@]}" "${extra_env[@]}" "${GATEWAY_BIN:-$PWD/target/release/ticketgate}")
    # launch<i>.sh starts the node, and starts it again on the same port (restart-storm).
    { printf 'echo $$ >%q\nexec' "$work/gateway$i.pid"; printf ' %q' "${command[@]}"
      printf ' 2>>%q\n' "$work/gateway$i.log"; } >"$work/launch$i.sh"
    : >"$work/gateway$i.log"
    bash "$work/launch$i.sh" &
    gateway_pids+=($!)
    gateway_urls+=("http://127.0.0.1:$port")
    for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || {
      echo "gateway $i did not become ready:" >&2; cat "$work/gateway$i.log" >&2; exit 1; }
  done
}

# load <node numbers to connect to, comma-separated> <scenario args…>: CPU and memory are
# read from exactly those nodes.
# WiredTiger's eviction counters: dirty pages written out to make room in the cache stall the
# transactions that touch them (docs/BENCHMARKS.md, "Where a history transaction's time goes").
wt_evictions() {
  "$venv/bin/python" -c "
import sys; from pymongo import MongoClient
c = MongoClient(sys.argv[1]).admin.command('serverStatus')['wiredTiger']['cache']
print(c['modified pages evicted'], c['history store table insert calls'])
" "$mongo_uri"
}
load() {
  local nodes=$1 args=() n
  shift
  for n in ${nodes//,/ }; do
    args+=(--url "${gateway_urls[$((n - 1))]}" --gateway-pid "${gateway_pids[$((n - 1))]}")
  done
  local perf_pid=
  if [ -n "${PERF_DIR:-}" ]; then
    mkdir -p "$PERF_DIR"
    local pids="${gateway_pids[*]}"
    perf record -q -e cpu-clock -F 999 -g -p "${pids// /,}" \
      -o "$PERF_DIR/$1-$(date +%s%N).data" 2>/dev/null &
    perf_pid=$!
  fi
  local mongod_before
  mongod_before=$(cpu_ticks "$mongod_pid")
  mongod_commands >"$work/commands.before"
  local evictions_before steal_before
  evictions_before=$(wt_evictions)
  steal_before=$(cpu_steal)
  "${LOAD_BIN:-target/release/ticketgate-load}" "${args[@]}" --secret "$SECRET" "$@"
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
  echo "mongod CPU during the run: $(( ($(cpu_ticks "$mongod_pid") - mongod_before) * 1000 / $(getconf CLK_TCK) )) ms;" \
    "commands: $(mongod_commands | "$venv/bin/python" -c '
import json, sys
before = json.load(open(sys.argv[1])); after = json.load(sys.stdin)
grown = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
print(", ".join(f"{n} {k}" for k, n in sorted(grown.items(), key=lambda kv: -kv[1])[:8]))
' "$work/commands.before")"
  local evictions_after
  evictions_after=$(wt_evictions)
  echo "WiredTiger during the run: $(( ${evictions_after% *} - ${evictions_before% *} )) dirty pages evicted," \
    "$(( ${evictions_after#* } - ${evictions_before#* } )) history store inserts"
  echo "host steal during the run: $(echo "$steal_before $(cpu_steal)" | awk '{ printf "%.1f", 100 * ($3 - $1) / ($4 - $2) }') % of the CPU time"
}

# cpu_steal: the ticks the hypervisor gave to others, and all ticks, so far. On a virtual
# machine the two cores are not always there: latency tails follow the steal.
cpu_steal() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# cpu_ticks <pid>: user + system CPU time of a process so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# mongod_commands: how many of each command mongod has run so far, as JSON.
mongod_commands() {
  "$venv/bin/python" - "$mongo_port" <<'PY'
import json, sys, pymongo
client = pymongo.MongoClient(f"mongodb://127.0.0.1:{sys.argv[1]}/?directConnection=true")
commands = client.admin.command("serverStatus")["metrics"]["commands"]
print(json.dumps({name: c["total"] for name, c in commands.items() if isinstance(c, dict) and "total" in c}))
PY
}

wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }

echo "# $(date -u +%F) on $(nproc) cores; $(uname -r); mongod 6.0.5 single-node replica set"
if wants connect; then
  start_gateways mongo 1
  echo "## connect, MongoDB store"; load 1 connect --connections "$N_CONNECT" --concurrency 200
  start_gateways memory 1
  echo "## connect, in-process store"; load 1 connect --connections "$N_CONNECT" --concurrency 200
fi
if wants connect-jti; then
  # Every JWT with a jti of its own: a revocation lookup at minting and at authentication.
  start_gateways mongo 1
  echo "## connect, MongoDB store, JWTs with a jti"
  load 1 --jti connect --connections "$N_CONNECT" --concurrency 200
fi
if wants fanout; then
  start_gateways mongo 1
  echo "## fanout (one node; broadcasts travel through the change stream)"
  load 1 fanout --connections "$N_FANOUT" --concurrency 200 --messages "$FANOUT_MESSAGES" \
    --rate "$FANOUT_RATE" --size 100 --api-key "$API_KEY"
  start_gateways memory 1
  echo "## fanout, in-process store (no MongoDB in the path)"
  load 1 fanout --connections "$N_FANOUT" --concurrency 200 --messages "$FANOUT_MESSAGES" \
    --rate "$FANOUT_RATE" --size 100 --api-key "$API_KEY"
fi
if wants idle; then
  start_gateways mongo 1
  echo "## idle"; load 1 idle --connections "$N_IDLE" --concurrency 200 --hold-secs 20
fi
if wants cluster; then
  start_gateways mongo 3
  echo "## cluster: cross-node latency (connections on nodes 1 and 2, published through node 3)"
  load 1,2 fanout --connections "$N_CROSS" --concurrency 200 --messages "$CROSS_MESSAGES" \
    --rate "$CROSS_RATE" --size 100 --api-key "$API_KEY" --publish-url "${gateway_urls[2]}"
  start_gateways mongo 3
  echo "## cluster: bus throughput (10 connections each on nodes 1 and 2, 32 publishers on node 3)"
  load 1,2 fanout --connections 20 --concurrency 20 --messages "$BUS_MESSAGES" --rate "$BUS_RATE" \
    --size 100 --api-key "$API_KEY" --publish-url "${gateway_urls[2]}" --publishers 32
fi
if wants idle-cluster; then
  start_gateways mongo 3
  echo "## idle over three nodes"
  load 1,2,3 idle --connections "$N_IDLE_CLUSTER" --concurrency 300 --hold-secs 20
fi
if wants compression; then
  for mode in off on; do
    flags=()
    if [ "$mode" = on ]; then flags=(--compression); fi
    GATEWAY_ENV="WS_COMPRESSION=$([ "$mode" = on ] && echo true || echo false)" start_gateways mongo 1
    echo "## fanout of ${COMPRESS_SIZE} B messages of words, compression $mode"
    load 1 fanout "${flags[@]}" --connections "$N_COMPRESS" --concurrency 200 \
      --messages "$FANOUT_MESSAGES" --rate "$FANOUT_RATE" --size "$COMPRESS_SIZE" --word-padding \
      --api-key "$API_KEY"
    GATEWAY_ENV="WS_COMPRESSION=$([ "$mode" = on ] && echo true || echo false)" start_gateways mongo 1
    echo "## idle, compression $mode"
    load 1 idle "${flags[@]}" --connections "$N_IDLE" --concurrency 200 --hold-secs 20
  done
fi
# channels_run <store: mongo|memory>: the channels scenario on one fresh gateway.
channels_run() {
  start_gateways "$1" 1
  echo "## channels, $1 store: ${N_CHAN} connections x ${CHAN_SUBSCRIBE} of ${CHAN_COUNT} channels, ${CHAN_RATE} publications/s for ${CHAN_SECS}s"
  load 1 --subscribe "$CHAN_SUBSCRIBE" --channels "$CHAN_COUNT" channels --connections "$N_CHAN" \
    --concurrency 200 --rate "$CHAN_RATE" --duration-secs "$CHAN_SECS" --broadcasts 20 \
    --broadcast-rate 5 --size 100 --api-key "$API_KEY"
}
if wants channels; then channels_run mongo; fi
# The same on the in-process store: no MongoDB in a publication's path, so what a publication
# costs before its first delivery is the API call and the encoding alone.
if wants channels-memory; then channels_run memory; fi
if wants channels-idle; then
  start_gateways mongo 1
  echo "## idle, ${CHAN_SUBSCRIBE} subscriptions each"
  load 1 --subscribe "$CHAN_SUBSCRIBE" --channels "$CHAN_COUNT" idle --connections "$N_IDLE" \
    --concurrency 200 --hold-secs 20
fi
if wants channels-cluster; then
  start_gateways mongo 3
  echo "## channels across nodes: subscribers on nodes 1 and 2, ${CHAN_CROSS_RATE} publications/s through node 3"
  load 1,2 --subscribe 10 --channels 100 channels --connections "$N_CHAN_CROSS" --concurrency 200 \
    --rate "$CHAN_CROSS_RATE" --duration-secs 30 --broadcasts 0 --publishers 16 --size 100 \
    --api-key "$API_KEY" --publish-url "${gateway_urls[2]}"
fi
if wants channels-bus; then
  # How many publications a second the bus carries: 20 connections on nodes 1 and 2 (10
  # subscriptions each over 1,000 channels, so most publications reach nobody, and every node
  # still decodes every event), 32 publishers on node 3.
  start_gateways mongo 3
  echo "## channels: bus throughput (publications through node 3, three change streams)"
  load 1,2 --subscribe 10 --channels 1000 channels --connections 20 --concurrency 20 \
    --rate "${BUS_CHAN_RATE:-20000}" --duration-secs 20 --broadcasts 0 --publishers 32 --size 100 \
    --api-key "$API_KEY" --publish-url "${gateway_urls[2]}"
fi
if wants presence; then
  # One channel with N_PRESENCE subscribers in a presence namespace; presence is then asked for
  # through the API while they are held.
  N_PRESENCE=${N_PRESENCE:-10000}
  GATEWAY_ENV="CONFIG_FILE=$work/presence.toml" start_gateways mongo 1
  echo "## presence of one channel with ${N_PRESENCE} subscribers"
  load 1 --subscribe 1 --channels 1 idle --connections "$N_PRESENCE" --concurrency 200 --hold-secs 30 &
  load_pid=$!
  url="${gateway_urls[0]}/api/channels/load:c0/presence"
  for _ in $(seq 600); do
    count=$(curl -fsS -H "Authorization: Bearer $API_KEY" "$url" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["clients"]))' 2>/dev/null || echo 0)
    [ "$count" -ge "$N_PRESENCE" ] && break
    sleep 0.5
  done
  for i in 1 2 3 4 5; do
    curl -fsS -o /dev/null -H "Authorization: Bearer $API_KEY" \
      -w "presence of ${count} subscribers: %{time_total} s, %{size_download} bytes\n" "$url"
  done
  wait "$load_pid"
fi
if wants history; then
  # Publications into history channels (history_size 100) on a single-node replica set,
  # batched by the node's bus writer: one `update` command appends a batch to its channels.
  # The latency run first: after the full-speed run, mongod spends the next minute
  # checkpointing what that run wrote, which is another measurement.
  GATEWAY_ENV="CONFIG_FILE=$work/history.toml" start_gateways mongo 1
  echo "## history: publish latency at 1,000 publications/s into 100 channels"
  load 1 --threads "${GENERATOR_THREADS:-1}" --subscribe 1 --channels 100 history-publish --rate 1000 --publishers 32 \
    --duration-secs 20 --size 100 --api-key "$API_KEY"
  # How long the bus writer's appends took (one per batch of publications).
  curl -fsS "${gateway_urls[0]}/metrics" | grep 'store_operation_seconds.*publish_history'
  GATEWAY_ENV="CONFIG_FILE=$work/history.toml" start_gateways mongo 1
  # Each publisher waits for its answer before the next, so they fall into two groups that
  # take turns: a batch holds half of them. 64 publishers measured their own round trip (32
  # a batch), not what the node can write; 128 keep the writer's batches full.
  echo "## history: publications into 100 channels, as fast as ${HISTORY_PUBLISHERS:-128} publishers go"
  load 1 --threads "${GENERATOR_THREADS:-1}" --subscribe 1 --channels 100 history-publish --publishers "${HISTORY_PUBLISHERS:-128}" --duration-secs 20 \
    --size 100 --api-key "$API_KEY"
fi
if wants jitter; then
  # After AnyCable's nodejs-websocket-bench: 2,000 subscribers of one channel, each connection
  # cut every 7.5 to 22.5 s for 2 s, while 10 publications/s flow for 60 s.
  GATEWAY_ENV="CONFIG_FILE=$work/history.toml" start_gateways mongo 1
  echo "## jitter: ${N_JITTER:-2000} subscribers cut every ~15 s for ~2 s"
  load 1 --subscribe 1 --channels 1 jitter --connections "${N_JITTER:-2000}" --rate 10 \
    --duration-secs "${JITTER_SECS:-60}" --cut-every-secs 15 --cut-for-secs 2 --api-key "$API_KEY"
fi
if wants restart-storm; then
  # 10,000 subscribers over 100 channels on node 1; node 1 killed, 10 publications per channel
  # made through node 2, node 1 started again; every client back with the browser client's backoff.
  GATEWAY_ENV="CONFIG_FILE=$work/history.toml" start_gateways mongo 2
  echo "## restart storm: ${N_STORM:-10000} subscribers over 100 channels, node restarted"
  load 1 --subscribe 1 --channels 100 restart-storm --connections "${N_STORM:-10000}" --missed 10 \
    --api-key "$API_KEY" --publish-url "${gateway_urls[1]}" --restart-command "bash $work/launch1.sh"
fi
if wants outbox; then
  # Publishing from the database against the API into the same 100 history channels, in one
  # run, alternated: throughput with 16 writers each, then latency at 1,000/s (docs/BENCHMARKS.md).
  GATEWAY_ENV="CONFIG_FILE=$work/history.toml OUTBOX_COLLECTION=outbox OUTBOX_DATABASE=bench_app" \
    start_gateways mongo 1
  echo "## outbox against the API: 100 subscribers over 100 channels"
  load 1 --threads "${GENERATOR_THREADS:-1}" --subscribe 1 --channels 100 outbox --connections 100 \
    --publishers "${OUTBOX_PUBLISHERS:-16}" --throughput-secs "${OUTBOX_SECS:-10}" \
    --rate "${OUTBOX_RATE:-1000}" --duration-secs "${OUTBOX_SECS:-10}" --rounds "${OUTBOX_ROUNDS:-2}" \
    --api-key "$API_KEY" --mongodb-uri "$mongo_uri" --outbox-database bench_app
fi
if wants rpc; then
  # RPCs to a minimal backend (a process of its own), directly and through one gateway.
  backend_port=$(free_port)
  target/release/ticketgate-load --secret "$SECRET" backend --port "$backend_port" 2>/dev/null &
  backend_pid=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$backend_port") 2>/dev/null && break; sleep 0.1; done
  GATEWAY_ENV="UPSTREAM_URL=http://127.0.0.1:$backend_port UPSTREAM_KEY=bench-upstream-key-0123456789" \
    start_gateways memory 1
  echo "## rpc: ${RPC_CONNECTIONS:-50} connections, one call in flight each"
  load 1 rpc --backend-url "http://127.0.0.1:$backend_port" --connections "${RPC_CONNECTIONS:-50}" \
    --duration-secs "${RPC_SECS:-10}"
  kill "$backend_pid" 2>/dev/null || true
  wait "$backend_pid" 2>/dev/null || true
fi
if wants lifecycle; then
  # The connect scenario without and with lifecycle events (recorded in MongoDB, posted to a
  # minimal webhook): a connect and a disconnect event per client. Alternated, since this
  # machine's connect rate drifts by more than the difference looked for.
  backend_port=$(free_port)
  target/release/ticketgate-load --secret "$SECRET" backend --port "$backend_port" 2>/dev/null &
  backend_pid=$!
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$backend_port") 2>/dev/null && break; sleep 0.1; done
  for round in $(seq "${LIFECYCLE_ROUNDS:-3}"); do
    start_gateways mongo 1
    echo "## lifecycle round $round: connect, events off"
    load 1 connect --connections "${N_LIFECYCLE:-10000}" --concurrency 200
    GATEWAY_ENV="EVENTS_WEBHOOK_URL=http://127.0.0.1:$backend_port/events UPSTREAM_KEY=bench-upstream-key-0123456789" \
      start_gateways mongo 1
    echo "## lifecycle round $round: connect, events on"
    load 1 connect --connections "${N_LIFECYCLE:-10000}" --concurrency 200
    sleep 2
    curl -fsS "${gateway_urls[0]}/metrics" | grep -E '^ticketgate_lifecycle_events_(recorded|delivered)_total'
  done
  kill "$backend_pid" 2>/dev/null || true
  wait "$backend_pid" 2>/dev/null || true
fi
if wants sse; then
  # WebSocket against SSE, alternated in each round on the same mongod: idle memory per
  # authenticated connection, broadcast fan-out (deliveries/s, CPU per delivery), and a client
  # message's round trip (ping → pong; on SSE a POST → an event), on one node and with the POST
  # landing on another node than the stream's.
  for round in $(seq "${SSE_ROUNDS:-2}"); do
    for transport in websocket sse; do
      start_gateways mongo 1
      echo "## sse round $round, $transport: idle"
      load 1 --transport "$transport" idle --connections "${N_SSE_IDLE:-10000}" --concurrency 200 --hold-secs 20
      start_gateways memory 1
      echo "## sse round $round, $transport: fanout, in-process store"
      load 1 --transport "$transport" fanout --connections "$N_FANOUT" --concurrency 200 \
        --messages "$FANOUT_MESSAGES" --rate "$FANOUT_RATE" --size 100 --api-key "$API_KEY"
      start_gateways mongo 2
      echo "## sse round $round, $transport: round trip, one node"
      load 1 --transport "$transport" roundtrip --connections 20 --duration-secs "${SSE_RT_SECS:-10}"
      if [ "$transport" = sse ]; then
        echo "## sse round $round, sse: round trip, stream on node 1, POSTs through node 2"
        load 1 --transport sse --post-url "${gateway_urls[1]}" roundtrip --connections 20 \
          --duration-secs "${SSE_RT_SECS:-10}"
      fi
    done
  done
fi
if wants floor; then
  # No gateway: what one write of a broadcast frame (about 170 B) costs the kernel here.
  echo "## loopback floor"; python3 scripts/loopback-floor.py "$N_FANOUT" 20 170
fi
