"""The scaling simulation (run it through scripts/scale-sim.sh, which installs what it needs).

For each node count, and each design given (alternated, so that the host's steal falls on
both alike), it starts a fresh cluster of gateway nodes on one single-node replica set, holds
subscribers on node 1 only, publishes at a fixed rate through the last node, and records
mongod's CPU per published event, each node's, publish latency and delivery lag (the load
generator's `channels` scenario). Node 1 has subscribers in every channel published to; the
nodes between the first and the last have none, so their CPU per event is what a node pays
for channels it has no subscriber in.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SECRET = "scale-secret-0123456789abcdef0123456789"
API_KEY = "scale-api-key-0123456789"
KINDS = {
    "plain": '[[channels.namespaces]]\nname = "load"\n',
    "history": '[[channels.namespaces]]\nname = "load"\nhistory_size = 100\n'
    "history_ttl_secs = 600\n",
}
children: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cpu_steal() -> tuple[int, int]:
    fields = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return fields[7], sum(fields)


def wait_ready(url: str, log: Path) -> None:
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} did not become ready:\n{log.read_text()[-3000:]}")


def start_mongod(mongod: str, work: Path) -> tuple[subprocess.Popen, str]:
    import pymongo

    port = free_port()
    (work / "db").mkdir()
    process = subprocess.Popen(
        [mongod, "--dbpath", str(work / "db"), "--port", str(port), "--bind_ip", "127.0.0.1",
         "--nounixsocket", "--quiet", "--replSet", "rs0", "--logpath", str(work / "mongod.log"),
         "--setParameter", "minSnapshotHistoryWindowInSeconds=0"],
        stdout=subprocess.DEVNULL,
    )
    children.append(process)
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=30000)
    client.admin.command(
        "replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]}
    )
    for _ in range(300):
        if client.admin.command("hello").get("isWritablePrimary"):
            return process, uri
        time.sleep(0.1)
    sys.exit("mongod did not become primary")


def start_nodes(binary: str, count: int, uri: str, database: str, config: Path, work: Path):
    nodes = []
    for i in range(1, count + 1):
        port = free_port()
        log = work / f"{database}-node{i}.log"
        env = {
            "PATH": os.environ["PATH"], "BIND_ADDR": f"127.0.0.1:{port}", "JWT_SECRET": SECRET,
            "API_KEY": API_KEY, "TICKET_RATE_PER_MIN": "100000000",
            "UPGRADE_RATE_PER_MIN": "100000000", "MAX_CONNECTIONS_PER_USER": "100000",
            "NODE_NAME": f"scale{i}", "RUST_LOG": "warn", "CONFIG_FILE": str(config),
            "MONGODB_URI": uri, "MONGODB_DATABASE": database,
        }
        # The test suite finds what it started (and left behind) by this variable.
        if "TICKETGATE_TEST_RUN" in os.environ:
            env["TICKETGATE_TEST_RUN"] = os.environ["TICKETGATE_TEST_RUN"]
        process = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(log, "w"))
        children.append(process)
        nodes.append((process, f"http://127.0.0.1:{port}", log))
    for _, url, log in nodes:
        wait_ready(url, log)
    return nodes


def perf_record(pids: list[int], out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-g", "-p",
         ",".join(map(str, pids)), "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def one_run(args, design, binary, count, kind, mongod, uri, work, serial, profile=False):
    config = work / f"{kind}.toml"
    config.write_text(KINDS[kind])
    database = f"scale_{serial}"
    nodes = start_nodes(binary, count, uri, database, config, work)
    try:
        pids = [p.pid for p, _, _ in nodes]
        perf = None
        if profile:
            Path(args.perf).mkdir(parents=True, exist_ok=True)
            perf = perf_record([mongod.pid, *pids],
                               Path(args.perf) / f"{design}-{kind}-{count}.data")
        steal = cpu_steal()
        command = [
            args.load, "--threads", "1", "--url", nodes[0][1], "--secret", SECRET,
            *[a for pid in pids for a in ("--gateway-pid", str(pid))],
            "--subscribe", str(args.subscribe), "--channels", str(args.channels),
            "channels", "--connections", str(args.connections), "--concurrency", "100",
            "--rate", str(args.rate), "--duration-secs", str(args.secs), "--broadcasts", "0",
            "--publishers", "8", "--size", "100", "--api-key", API_KEY,
            "--publish-url", nodes[-1][1], "--mongod-pid", str(mongod.pid),
            "--rest-secs", str(args.rest_secs),
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        if out.returncode != 0:
            sys.exit(f"the load generator failed: {out.stderr}")
        steal_after = cpu_steal()
        report = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        stop([p for p, _, _ in nodes])
    published = report["publications"]
    # What each process spends at rest (heartbeats, idle getMores) over the same span is not
    # the events' cost: taken off, what is left is CPU per event.
    scale = report["publication_seconds"] / report["rest_seconds"] if args.rest_secs else 0
    # (A node that does nothing for the events can come out a little below zero, its rest
    # having been the noisier span: it is counted as zero.)
    each = [max(0.0, busy - rest * scale) for busy, rest in
            zip(report["gateway_cpu_seconds_each"], report["gateway_cpu_seconds_at_rest_each"])]
    mongod_busy = report["mongod_cpu_seconds"] - (report["mongod_cpu_seconds_at_rest"] or 0) * scale
    per_event = lambda seconds: None if seconds is None else round(seconds / published * 1e6, 1)
    idle = each[1:-1]
    return {
        "design": design, "nodes": count, "kind": kind, "rate": args.rate,
        "published": published, "delivered": report["deliveries"], "expected": report["expected"],
        "lost": report["lost"],
        "mongod_us_per_event": per_event(mongod_busy),
        "subscriber_node_us_per_event": per_event(each[0]),
        "publishing_node_us_per_event": per_event(each[-1]),
        "idle_node_us_per_event": per_event(sum(idle) / len(idle)) if idle else None,
        "all_nodes_us_per_event": per_event(sum(each)),
        "publish_ms": report["publish_latency_ms"],
        "lag_ms": report["latency_ms"],
        "steal_percent": round(100 * (steal_after[0] - steal[0]) / (steal_after[1] - steal[1]), 1),
    }


def table(results: list[dict]) -> str:
    lines = [
        "| nodes | kind | design | mongod µs/event | subscriber node | idle node (mean) "
        "| publishing node | all nodes | publish p50/p99 ms | lag p50/p99 ms | delivered | steal % |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|---|---|---:|",
    ]
    show = lambda v: "–" if v is None else f"{v:.0f}"
    for r in sorted(results, key=lambda r: (r["kind"], r["nodes"], r["design"])):
        lines.append(
            f"| {r['nodes']} | {r['kind']} | {r['design']} | {show(r['mongod_us_per_event'])} "
            f"| {show(r['subscriber_node_us_per_event'])} | {show(r['idle_node_us_per_event'])} "
            f"| {show(r['publishing_node_us_per_event'])} | {show(r['all_nodes_us_per_event'])} "
            f"| {r['publish_ms']['p50']:.1f} / {r['publish_ms']['p99']:.1f} "
            f"| {r['lag_ms']['p50']:.1f} / {r['lag_ms']['p99']:.1f} "
            f"| {r['delivered']}/{r['expected']} | {r['steal_percent']} |"
        )
    return "\n".join(lines) + "\n"


def svg(results: list[dict]) -> str:
    """Two panels (mongod, all nodes) of CPU µs per event against node count, log2 x axis."""
    panels = [("mongod CPU per event (µs)", "mongod_us_per_event"),
              ("all nodes' CPU per event (µs)", "all_nodes_us_per_event")]
    series = sorted({(r["design"], r["kind"]) for r in results})
    counts = sorted({r["nodes"] for r in results})
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    width, height, margin = 420, 300, 55
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{height + 40}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect width="{2 * width}" height="{height + 40}" fill="white"/>']
    for index, (title, key) in enumerate(panels):
        x0 = index * width
        values = [r[key] for r in results if r[key] is not None]
        top = max(values) * 1.1 if values else 1
        span = max(1, len(counts) - 1)
        px = lambda i: x0 + margin + i * (width - 2 * margin) / span
        py = lambda v: height - margin + 10 - v / top * (height - 2 * margin)
        parts.append(f'<text x="{x0 + width / 2}" y="18" text-anchor="middle" '
                     f'font-size="13">{title}</text>')
        parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(span)}" y2="{py(0)}" stroke="black"/>')
        parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(0)}" y2="{py(top)}" stroke="black"/>')
        for i, n in enumerate(counts):
            parts.append(f'<text x="{px(i)}" y="{py(0) + 15}" text-anchor="middle">{n}</text>')
        parts.append(f'<text x="{x0 + width / 2}" y="{py(0) + 30}" text-anchor="middle">nodes</text>')
        for k in range(5):
            v = top * k / 4
            parts.append(f'<text x="{px(0) - 5}" y="{py(v) + 4}" text-anchor="end">{v:.0f}</text>')
        for s, (design, kind) in enumerate(series):
            points = [(counts.index(r["nodes"]), r[key]) for r in sorted(results, key=lambda r: r["nodes"])
                      if (r["design"], r["kind"]) == (design, kind) and r[key] is not None]
            color = colors[s % len(colors)]
            dash = ' stroke-dasharray="5,3"' if kind == "history" else ""
            path = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in points)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for i, v in points:
                parts.append(f'<circle cx="{px(i):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>')
            if index == 0:
                parts.append(f'<text x="{px(0) + 10}" y="{40 + 14 * s}" fill="{color}">'
                             f'{design}, {kind}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mongod", required=True)
    parser.add_argument("--design", action="append", default=[], type=lambda s: s.split("=", 1),
                        help="name=path of a gateway binary; repeat for an A/B")
    parser.add_argument("--nodes", default=[1, 2, 4, 8, 16],
                        type=lambda s: [int(n) for n in s.split(",")])
    parser.add_argument("--kinds", default=["plain", "history"], type=lambda s: s.split(","))
    parser.add_argument("--rate", type=float, default=400, help="publications per second")
    parser.add_argument("--secs", type=int, default=10, help="how long publications go on")
    parser.add_argument("--channels", type=int, default=400)
    parser.add_argument("--connections", type=int, default=400, help="subscribers on node 1")
    parser.add_argument("--subscribe", type=int, default=2, help="channels per subscriber")
    parser.add_argument("--rest-secs", type=int, default=5,
                        help="CPU at rest measured this long first, and taken off")
    parser.add_argument("--load", default="target/release/ticketgate-load")
    parser.add_argument("--out", default="docs/scaling")
    parser.add_argument("--perf", help="a directory for perf profiles (mongod and every node) "
                        "of extra runs at the largest count")
    parser.add_argument("--render", action="store_true",
                        help="only write the table and the plot again from OUT/results.jsonl")
    args = parser.parse_args()
    args.design = args.design or [["this", "target/release/ticketgate"]]
    for kind in args.kinds:
        if kind not in KINDS:
            sys.exit(f"unknown kind {kind}: one of {', '.join(KINDS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        (out / "table.md").write_text(table(results))
        (out / "curves.svg").write_text(svg(results))
        print(table(results))
        return
    results = []
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        mongod, uri = start_mongod(args.mongod, work)
        try:
            serial = 0
            for count in args.nodes:
                for kind in args.kinds:
                    # Alternate the designs' order from one count to the next.
                    designs = args.design if serial % 2 == 0 else list(reversed(args.design))
                    for design, binary in designs:
                        serial += 1
                        result = one_run(args, design, binary, count, kind, mongod, uri, work, serial)
                        print(json.dumps(result), flush=True)
                        results.append(result)
            # Profiles come from runs of their own, kept out of the table: perf slows what it
            # watches.
            if args.perf:
                for kind in args.kinds:
                    for design, binary in args.design:
                        serial += 1
                        one_run(args, design, binary, max(args.nodes), kind, mongod, uri, work,
                                serial, profile=True)
        finally:
            stop(children)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    (out / "table.md").write_text(table(results))
    (out / "curves.svg").write_text(svg(results))
    print(table(results))


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        main()
    finally:
        stop(children)
