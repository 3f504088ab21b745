"""The capacity table of docs/SCALING.md, with its arithmetic: every input is a figure measured
on this machine (with the command that measured it) or a stated assumption of the workload,
and every output is derived from them here, so a new measurement changes the table by
editing one line.

    python3 scripts/capacity.py            # prints the table and the arithmetic, in Markdown
"""

import math

# Measured here (docs/BENCHMARKS.md and docs/SCALING.md name the runs).
MEASURED = {
    # `SCENARIOS=idle scripts/bench.sh`: 19,000 idle connections, one process.
    "gateway_kib_per_connection": 5.77,
    # docs/SCALING.md, "Memory": the kernel's slab per idle established TCP socket (10,000
    # loopback connections held, both ends on this host, so halved); 0 pages of TCP buffers.
    "kernel_kib_per_socket": 4.15,
    # `SCENARIOS=idle`: 5.4 % of a core for 19,000 idle connections (pings every 25 s).
    "idle_cpu_us_per_connection_second": 0.054 * 1e6 / 19_000,
    # `SCENARIOS=channels`: gateway CPU per channel delivery, 500 publications/s into 1,000
    # channels of 10,000 subscribers (11.8 to 14.0 µs); 13 taken.
    "cpu_us_per_delivery": 13.0,
    # `SCENARIOS=connect`, MongoDB store: gateway CPU per full authentication (mint, upgrade,
    # JWT) 125 to 164 µs over ten runs; mongod's 485 µs (group-committed tickets).
    "gateway_us_per_auth": 145.0,
    "mongod_us_per_auth": 485.0,
    # scripts/scale-sim.sh, new design: a node with subscribers decodes a publication of
    # its channels for about 75 µs less its deliveries (subscriber node 101 µs for two
    # deliveries of 13 µs); the node that takes the API call spends 111 µs on it.
    "node_us_per_event_carried": 75.0,
    "node_us_per_api_publish": 111.0,
    # Each open change stream costs mongod about 60 µs per commit it is woken for, whether its
    # $match takes the write or not: scripts/scale-sim.sh, new design, (689 - 274) / 7 = 59 µs
    # per added node per publication; scripts/mongod-cursor-costs.py, 65 µs.
    "mongod_us_per_stream_wakeup": 60.0,
    # scripts/scale-sim.sh, 1 node: mongod CPU per publication written and delivered to one
    # stream (a plain channel; 1.8x that in a history channel), one write per commit.
    "mongod_us_per_publication": 260.0,
    # `SCENARIOS=restart-storm`: 10,000 subscribers of a killed node all back and recovered
    # within 4.6 to 7.1 s on this 2-core machine, gateway and mongod sharing it.
    "storm_10k_seconds": 7.1,
}

# The workload: stated, not measured.
WORKLOAD = {
    "connections_per_user": 1.5,  # a phone and a laptop tab, on average
    "subscriptions_per_connection": 5,
    "publications_per_second_per_1000_connections": 10,
    "fanout": 50,  # deliveries per publication
    "reconnects_per_connection_per_hour": 0.5,  # networks, sleep, deploys
    "recovery_window_seconds": 300,  # how long a client may be away and still recover
    "oplog_bytes_per_publication": 600,  # the event or append entry with ~100 B of data
    "publications_per_commit": 4,  # group commit at these rates (1 at 400/s in the simulation)
}

# What a node is: 8 vCPU and 16 GiB, run to 60 % of its CPU, at most 50,000 connections (so a
# node lost is a storm of 50,000).
NODE = {"cores": 8, "utilisation": 0.6, "memory_gib": 16, "max_connections": 50_000}
# A MongoDB primary: 16 cores run to 60 %.
MONGOD_CORES = 16 * 0.6


def size(connections: int) -> dict:
    m, w = MEASURED, WORKLOAD
    publications = connections / 1000 * w["publications_per_second_per_1000_connections"]
    deliveries = publications * w["fanout"]
    auths_steady = connections * w["reconnects_per_connection_per_hour"] / 3600
    # Nodes by CPU, found by iterating: a channel's subscribers are spread over the nodes at
    # random (a load balancer knows no channels), so a publication is carried by
    # n(1 - (1 - 1/n)^fanout) of n nodes.
    nodes = max(2, math.ceil(connections / NODE["max_connections"]))
    while True:
        carried_by = nodes * (1 - (1 - 1 / nodes) ** w["fanout"])
        cpu_us = (
            deliveries * m["cpu_us_per_delivery"]
            + connections * m["idle_cpu_us_per_connection_second"]
            + auths_steady * m["gateway_us_per_auth"]
            + publications * carried_by * m["node_us_per_event_carried"]
            + publications * m["node_us_per_api_publish"]
        )
        cores = cpu_us / 1e6
        if cores <= nodes * NODE["cores"] * NODE["utilisation"]:
            break
        nodes += 1
    # +1 node so that losing one leaves room for its connections.
    nodes += 1
    per_node = connections / (nodes - 1)
    memory_gib = per_node * (m["gateway_kib_per_connection"] + m["kernel_kib_per_socket"]) / 2**20
    commits = publications / w["publications_per_commit"]
    storm_auths = min(per_node, NODE["max_connections"]) / 30  # a dead node's clients, in 30 s
    mongod_cores = (
        publications * m["mongod_us_per_publication"]
        + commits * nodes * m["mongod_us_per_stream_wakeup"]
        + (auths_steady + storm_auths) * m["mongod_us_per_auth"]
    ) / 1e6
    # Change streams through mongos open a cursor on every shard for every node: sharding
    # divides the writes, not the wake-ups per write.
    shards = max(1, math.ceil(mongod_cores / MONGOD_CORES))
    oplog_gib = publications * w["oplog_bytes_per_publication"] * w["recovery_window_seconds"] * 2 / 2**30
    return {
        "connections": connections,
        "users": connections / w["connections_per_user"],
        "publications": publications,
        "deliveries": deliveries,
        "auths_steady": auths_steady,
        "storm_auths": storm_auths,
        "nodes": nodes,
        "carried_by": carried_by,
        "node_cores_used": cores,
        "per_node": per_node,
        "memory_gib": memory_gib,
        "mongod_cores": mongod_cores,
        "wakeup_cores": commits * nodes * m["mongod_us_per_stream_wakeup"] / 1e6,
        "shards": shards,
        "oplog_gib": oplog_gib / shards,
        "network_mbit": deliveries * 200 * 8 / 1e6,
    }


def main() -> None:
    rows = [size(n) for n in (100_000, 1_000_000, 10_000_000)]
    print("| | 100k | 1M | 10M |")
    print("|---|---:|---:|---:|")
    # (row, the figure's key or a function of the row, its format)
    lines = [
        ("users", "users", ",.0f"),
        ("publications/s", "publications", ",.0f"),
        ("deliveries/s", "deliveries", ",.0f"),
        ("authentications/s, steady / a node's storm",
         lambda r: f"{r['auths_steady']:,.0f} / {r['storm_auths']:,.0f}", None),
        ("gateway nodes (8 vCPU, one spare)", "nodes", "d"),
        ("nodes carrying a publication", "carried_by", ".1f"),
        ("gateway cores used in all", "node_cores_used", ".1f"),
        ("connections per node", "per_node", ",.0f"),
        ("memory per node (gateway + kernel), GiB", "memory_gib", ".2f"),
        ("mongod cores (of which stream wake-ups)",
         lambda r: f"{r['mongod_cores']:.1f} ({r['wakeup_cores']:.1f})", None),
        ("replica sets / shards (16 cores at 60 %)", "shards", "d"),
        ("oplog per shard for a 5-minute recovery window, GiB", "oplog_gib", ".2f"),
        ("delivery traffic, Mbit/s (200 B a message)", "network_mbit", ",.0f"),
    ]
    for name, figure, form in lines:
        shown = [figure(r) if callable(figure) else format(r[figure], form) for r in rows]
        print(f"| {name} | " + " | ".join(shown) + " |")
    print()
    print("Inputs measured here:")
    for key, value in MEASURED.items():
        print(f"- `{key}` = {value:g}")
    print("Workload:")
    for key, value in WORKLOAD.items():
        print(f"- `{key}` = {value:g}")


if __name__ == "__main__":
    main()
