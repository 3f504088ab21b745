"""What mongod's CPU pays for each shape of write the history path makes (docs/BENCHMARKS.md,
"Where a history transaction's time goes").

Starts a throwaway single-node replica set on a free port, fills 100 channel histories as the
gateway stores them (one document per channel, 100 publications of 100 bytes), then runs each
shape N times from one client and reports mongod's CPU time (from /proc) and the wall time per
write. The client's own CPU does not count, so Python's speed does not matter.

    python scripts/mongod-write-costs.py            # mongod and pymongo from scripts/bench.sh's venv

Run it with the venv's Python: "$HOME/.cache/ticketgate/mongod-venv/bin/python".
"""

import atexit
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from pymongo import MongoClient, WriteConcern
from pymongo.read_concern import ReadConcern

N = int(os.environ.get("N", "2000"))
PAD = "x" * 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mongod():
    here = os.path.dirname(os.path.abspath(__file__))
    binary = subprocess.run(
        ["bash", os.path.join(here, "install-mongod.sh")], check=True, capture_output=True, text=True
    ).stdout.strip()
    dbpath, port = tempfile.mkdtemp(), free_port()
    process = subprocess.Popen(
        [binary, "--dbpath", dbpath, "--port", str(port), "--bind_ip", "127.0.0.1", "--nounixsocket",
         "--quiet", "--replSet", "rs0", "--logpath", os.path.join(dbpath, "log")],
        stdin=subprocess.DEVNULL,
    )
    atexit.register(lambda: (process.terminate(), process.wait(), shutil.rmtree(dbpath, True)))
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    for _ in range(100):
        try:
            MongoClient(uri, serverSelectionTimeoutMS=200).admin.command("ping")
            break
        except Exception:
            time.sleep(0.1)
    setup = MongoClient(uri)
    setup.admin.command("replSetInitiate", {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{port}"}]})
    while not setup.admin.command("hello").get("isWritablePrimary"):
        time.sleep(0.1)
    setup.close()
    return process, MongoClient(uri)


def main():
    mongod, client = start_mongod()
    db = client.get_database("costs", write_concern=WriteConcern("majority"))
    tops = {}

    def fill(kept):
        for ch in range(100):
            name = f"c{ch}"
            tops[name] = tops.get(name, 0) + kept
            db.channel_history.replace_one(
                {"_id": name}, {"_id": name, "epoch": "e", "top": tops[name], "pubs": [{"d": PAD}] * kept},
                upsert=True,
            )

    def cpu_seconds():
        with open(f"/proc/{mongod.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def measure(name, write, channels=3):
        fill(100)
        cpu, wall = cpu_seconds(), time.perf_counter()
        for _ in range(N):
            write([f"c{ch}" for ch in random.sample(range(100), channels)])
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
        print(f"{name:58} {1e6 * cpu / N:6.0f} µs mongod CPU, {1e3 * wall / N:5.2f} ms wall per write", flush=True)

    def statements(channels, by_position):
        result = []
        for name in channels:
            if by_position:  # the gateway's: matches only the position it starts from
                query = {"_id": name, "epoch": "e", "top": tops[name]}
                update = {"$set": {"top": tops[name] + 1}, "$push": {"pubs": {"$each": [{"d": PAD}]}}}
            else:
                query = {"_id": name}
                update = {"$inc": {"top": 1}, "$push": {"pubs": {"$each": [{"d": PAD}]}}}
            tops[name] += 1
            result.append({"q": query, "u": update})
        return result

    def transaction(update=True, insert=True, by_position=True):
        def write(channels):
            with client.start_session() as session:
                session.start_transaction(read_concern=ReadConcern("snapshot"), write_concern=WriteConcern("majority"))
                if update:
                    db.command({"update": "channel_history", "updates": statements(channels, by_position)},
                               session=session)
                if insert:
                    db.cluster_events.insert_many([{"n": 1, "d": PAD} for _ in channels], session=session)
                session.commit_transaction()
        return write

    def plain_insert(concern):
        events = client.get_database("costs", write_concern=concern).cluster_events
        return lambda channels: events.insert_many([{"n": 1, "d": PAD} for _ in channels])

    # Warm up (caches, the first transactions' setup), unreported.
    fill(100)
    for _ in range(N // 4):
        transaction()([f"c{ch}" for ch in random.sample(range(100), 3)])
    measure("transaction: update + insert + commit, 1 channel", transaction(), 1)
    measure("transaction: update + insert + commit, 3 channels", transaction())
    measure("transaction: update + insert + commit, 6 channels", transaction(), 6)
    measure("transaction, 3 channels, statements by _id alone ($inc)", transaction(by_position=False))
    measure("transaction: insert + commit, 3 documents", transaction(update=False))
    measure("transaction: update + commit, 3 channels", transaction(insert=False))
    measure("no transaction: update of 3 channels, majority",
            lambda channels: db.command({"update": "channel_history", "updates": statements(channels, False)}))
    measure("no transaction: insert of 3 documents, majority", plain_insert(WriteConcern("majority")))
    measure("no transaction: insert of 3 documents, w:1 j:true", plain_insert(WriteConcern(w=1, j=True)))
    measure("no transaction: insert of 3 documents, w:1 j:false", plain_insert(WriteConcern(w=1, j=False)))


if __name__ == "__main__":
    sys.exit(main())
