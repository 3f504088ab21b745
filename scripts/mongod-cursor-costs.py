"""What an open change stream costs mongod per write, with and without a `$match` that keeps
the write away from it (docs/SCALING.md, "Why mongod's share does not fall 3x").

Starts a throwaway single-node replica set on a free port, opens K change streams on the
database (each read by a thread of its own, as K gateway nodes would), inserts documents one
by one at a fixed rate with write concern `majority`, and reports mongod's CPU time per insert
(from /proc) for: no stream, K streams that receive every insert, K streams whose `$match`
(on a partition list, as ticketgate's) receives none, K streams whose `$match` is on `ns.coll`
alone (certainly pushed down into the oplog scan), K tailable cursors each awaiting on a capped
collection of its own that nobody writes to (what a per-node doorbell would cost), and no
stream again.

    "$HOME/.cache/ticketgate/mongod-venv/bin/python" scripts/mongod-cursor-costs.py
    K=15 RATE=400 SECS=6 …                          # other counts
    DOORBELL=tg …  or  DOORBELL=local …             # the doorbell design against today's:
        one receiving stream awaiting and K filtered ones awaiting, against one receiving
        stream read once per ring (a w:1 insert into a capped collection after each write,
        tailed by the receiver) and K filtered streams read once a second
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from pymongo import CursorType, MongoClient, WriteConcern

K = int(os.environ.get("K", "7"))
RATE = float(os.environ.get("RATE", "400"))
SECS = float(os.environ.get("SECS", "6"))
# DOORBELL=tg (or local): compare today's design at K + 1 nodes with the doorbell design, its
# doorbell a capped collection in that database (`local` is not replicated: no oplog entry).
BELL_DB = os.environ.get("DOORBELL") or "tg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    mongod = os.environ.get("MONGOD_BIN") or shutil.which("mongod")
    if not mongod:
        sys.exit("set MONGOD_BIN (scripts/install-mongod.sh prints it)")
    work = tempfile.mkdtemp()
    port = free_port()
    process = subprocess.Popen(
        [mongod, "--dbpath", work, "--port", str(port), "--bind_ip", "127.0.0.1",
         "--replSet", "rs0", "--quiet", "--logpath", f"{work}/mongod.log",
         "--setParameter", "minSnapshotHistoryWindowInSeconds=0"],
        stdout=subprocess.DEVNULL,
    )
    try:
        uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
        client = MongoClient(uri, serverSelectionTimeoutMS=30000)
        client.admin.command("replSetInitiate", {
            "_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
        while not client.admin.command("hello").get("isWritablePrimary"):
            time.sleep(0.1)
        events = client.tg.get_collection("events", write_concern=WriteConcern(w="majority"))
        events.insert_one({"warm": True})

        def run(streams: int, pipeline: list, doorbells: bool = False,
                rung: bool = False, mixed: bool = False) -> float:
            """`rung`: the doorbell design. One receiving stream read only when its
            doorbell rings (a w:1 insert into its capped collection after each event's
            write), and `streams` filtered streams that take nothing, read every second
            without waiting, as idle nodes' would be."""
            stop = threading.Event()
            quick = 1  # ms: a getMore that hardly waits

            def receive() -> None:
                db = MongoClient(uri).tg
                bell = MongoClient(uri)[BELL_DB]["bell_rx"].find({}, cursor_type=CursorType.TAILABLE_AWAIT)
                bell = bell.max_await_time_ms(500)
                only_events = [{"$match": {"ns.coll": "events"}}]
                with db.watch(only_events, max_await_time_ms=quick) as stream:
                    while not stop.is_set() and bell.alive:
                        if next(bell, None) is not None:
                            stream.try_next()  # one getMore a ring: the event is committed

            def poll() -> None:
                with MongoClient(uri).tg.watch(pipeline, max_await_time_ms=quick) as stream:
                    while not stop.wait(1.0):
                        while stream.try_next() is not None:
                            pass

            def follow(pipeline: list = pipeline) -> None:
                with MongoClient(uri).tg.watch(pipeline, max_await_time_ms=500) as stream:
                    while not stop.is_set():
                        stream.try_next()

            def tail(i: int) -> None:
                bell = MongoClient(uri).tg[f"bell_{i}"]
                cursor = bell.find({}, cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(500)
                while not stop.is_set() and cursor.alive:
                    next(cursor, None)  # a getMore that waits up to 500 ms for a ring

            if rung:
                target = lambda _: poll()  # noqa: E731
            else:
                target = tail if doorbells else (lambda _: follow())
            threads = [threading.Thread(target=target, args=(i,)) for i in range(streams)]
            if rung:
                threads.append(threading.Thread(target=receive))
            if mixed:  # and one stream that takes every insert
                threads.append(threading.Thread(target=follow, args=([],)))
            for thread in threads:
                thread.start()
            time.sleep(1.5)
            before, n, start = cpu_seconds(process.pid), int(RATE * SECS), time.monotonic()
            for i in range(n):
                events.insert_one({"kind": "publications", "partitions": [i % 4096], "data": "x" * 100})
                if rung:
                    ring.insert_one({"rung": i})
                delay = start + (i + 1) / RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            used = cpu_seconds(process.pid) - before
            stop.set()
            for thread in threads:
                thread.join()
            return used / n * 1e6

        for i in range(K):
            client.tg.create_collection(f"bell_{i}", capped=True, size=4096)
            client.tg[f"bell_{i}"].insert_one({"rung": 0})
        client[BELL_DB].create_collection("bell_rx", capped=True, size=4096)
        client[BELL_DB]["bell_rx"].insert_one({"rung": 0})
        ring = client[BELL_DB].get_collection("bell_rx", write_concern=WriteConcern(w=1))
        nothing = [{"$match": {"fullDocument.partitions": {"$in": list(range(100000, 100400))}}}]
        rows = [
            ("no stream", 0, [], None),
            (f"{K} streams, every insert", K, [], None),
            (f"{K} streams, a partition $match that takes none", K, nothing, None),
            (f"{K} streams, an ns.coll $match that takes none", K, [{"$match": {"ns.coll": "none"}}], None),
            (f"{K} tailable cursors on capped collections of their own, none written", K, None, None),
            ("no stream, again", 0, [], None),
        ]
        if os.environ.get("DOORBELL"):
            # Today's interest-based design at K + 1 nodes against the doorbell design.
            rows = [
                ("1 stream, every insert", 1, [], None),
                (f"1 stream, every insert; {K} partition-filtered streams awaiting", K, nothing, "mixed"),
                (f"doorbell: 1 stream read when rung; {K} filtered streams read each second", K, nothing, "rung"),
                ("1 stream, every insert, again", 1, [], None),
                (f"1 stream, every insert; {K} partition-filtered streams awaiting, again", K, nothing, "mixed"),
                (f"doorbell: 1 stream read when rung; {K} filtered streams read each second, again", K, nothing, "rung"),
            ]
        for name, streams, pipeline, design in rows:
            cost = run(streams, pipeline or [], doorbells=pipeline is None and design is None,
                       rung=design == "rung", mixed=design == "mixed")
            print(f"{name}: {cost:.0f} µs of mongod CPU per insert", flush=True)
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
