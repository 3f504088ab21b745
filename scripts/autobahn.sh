#!/usr/bin/env bash
# Runs the public Autobahn|Testsuite (fuzzingclient, autobahntestsuite 0.8.2 on Python 2.7)
# against a ticketgate built from this tree, through scripts/autobahn-proxy.py (ticket, upgrade
# and JWT, then raw bytes both ways). Not part of the test run: it needs Python 2.7 (pyenv has
# it here) and takes minutes. Writes target/autobahn/index.html and prints a summary;
# docs/SECURITY.md records the last result and reads it.
#
#   PYTHON2   a Python 2.7 interpreter (default: ~/.pyenv/versions/2.7.18/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."

py2="${PYTHON2:-$HOME/.pyenv/versions/2.7.18/bin/python}"
cache="${TICKETGATE_CACHE:-$HOME/.cache/ticketgate}/autobahn"
if [ ! -d "$cache/lib/autobahntestsuite" ]; then
  mkdir -p "$cache"
  "$py2" -m pip install --quiet --target "$cache/lib" autobahntestsuite==0.8.2 >&2
fi

cargo build --quiet --bin ticketgate
secret="autobahn-secret-0123456789abcdef0123456789"
gateway_port=19201
proxy_port=19202
out=target/autobahn
mkdir -p "$out"

# Section 9 (large and many messages) needs an echo to mean anything; sections 12 and 13 test
# permessage-deflate (WS_COMPRESSION), not yet run through this proxy: all three are left out.
JWT_SECRET=$secret BIND_ADDR=127.0.0.1:$gateway_port MAX_MESSAGE_BYTES=16777216 \
  UPGRADE_RATE_PER_MIN=100000 TICKET_RATE_PER_MIN=100000 RUST_LOG=warn \
  target/debug/ticketgate >"$out/gateway.log" 2>&1 &
gateway=$!
trap 'kill $gateway $proxy 2>/dev/null || true' EXIT
sleep 1
jwt=$(JWT_SECRET=$secret target/debug/ticketgate mint-jwt --sub autobahn --ttl-secs 86400)
python3 scripts/autobahn-proxy.py $proxy_port $gateway_port "$jwt" 2>"$out/proxy.log" &
proxy=$!
sleep 1

cat >"$out/fuzzingclient.json" <<JSON
{
  "outdir": "$PWD/$out/reports",
  "servers": [{"agent": "ticketgate", "url": "ws://127.0.0.1:$proxy_port"}],
  "cases": ["*"],
  "exclude-cases": ["9.*", "12.*", "13.*"],
  "exclude-agent-cases": {}
}
JSON
# site.addsitedir, not PYTHONPATH alone: zope is a namespace package set up by a .pth file.
(cd "$out" && "$py2" -c "import site, sys; site.addsitedir('$cache/lib'); \
sys.argv = ['wstest', '-m', 'fuzzingclient', '-s', 'fuzzingclient.json']; \
from autobahntestsuite.wstest import run; run()" >wstest.log 2>&1)

python3 - "$out/reports/index.json" <<'PY'
import collections, json, os, sys
results = json.load(open(sys.argv[1]))["ticketgate"]

def needs_echo(case):
    """Whether the case expects a data message back: the gateway echoes none by design."""
    path = os.path.join(os.path.dirname(sys.argv[1]), case["reportfile"].replace(".html", ".json"))
    report = json.load(open(path))
    expected = report.get("expected") or {}
    return any(ev and ev[0] == "message" for evs in expected.values() for ev in evs or [])

passed = lambda c: c["behavior"] in ("OK", "NON-STRICT", "INFORMATIONAL") and c["behaviorClose"] in ("OK", "INFORMATIONAL")
no_echo = [c for c in results.values() if not needs_echo(c)]
print("autobahn: cases that need no echo: %d of %d pass" % (sum(map(passed, no_echo)), len(no_echo)))
for k, c in sorted(results.items()):
    if not needs_echo(c) and not passed(c):
        print("  FAILED without needing an echo: %s (%s, close %s)" % (k, c["behavior"], c["behaviorClose"]))
by = collections.Counter(r["behavior"] for r in results.values())
close = collections.Counter(r["behaviorClose"] for r in results.values())
print("autobahn: %d cases: %s" % (len(results), ", ".join("%s %d" % kv for kv in sorted(by.items()))))
print("autobahn: closing behaviour: %s" % ", ".join("%s %d" % kv for kv in sorted(close.items())))
for section in sorted({k.split(".")[0] for k in results}, key=int):
    cases = {k: v for k, v in results.items() if k.split(".")[0] == section}
    c = collections.Counter(v["behavior"] for v in cases.values())
    print("  section %s: %s" % (section, ", ".join("%s %d" % kv for kv in sorted(c.items()))))
PY
