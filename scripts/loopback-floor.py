#!/usr/bin/env python3
"""The kernel's price of one small write to one of many loopback TCP sockets.

A broadcast delivery is, at the least, one such write. On loopback the writer's CPU also pays
for the receiving socket's TCP processing, which runs in the sender's context. This measures
that floor with no gateway at all: one process accepts N connections and drains them; another
writes SIZE bytes to each of them ROUNDS times and reports its own CPU time per write.

    python3 scripts/loopback-floor.py [N=10000] [ROUNDS=20] [SIZE=110]
"""
import os
import select
import socket
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20
size = int(sys.argv[3]) if len(sys.argv) > 3 else 110

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(4096)
port = server.getsockname()[1]
reader = os.fork()
if reader == 0:
    poll = select.epoll()
    conns = {}
    for _ in range(n):
        conn, _ = server.accept()
        conn.setblocking(False)
        poll.register(conn.fileno(), select.EPOLLIN)
        conns[conn.fileno()] = conn
    remaining = n * rounds * size
    while remaining > 0:
        for fd, _ in poll.poll():
            try:
                remaining -= len(conns[fd].recv(65536))
            except BlockingIOError:
                pass
    os._exit(0)

writers = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writers.append(s)
time.sleep(1)
message = b"x" * size
before = os.times()
for _ in range(rounds):
    for s in writers:
        s.send(message)
after = os.times()
os.waitpid(reader, 0)
writes = n * rounds
user = (after.user - before.user) / writes * 1e6
system = (after.system - before.system) / writes * 1e6
print(
    f"loopback floor: {writes} writes of {size} B over {n} sockets: "
    f"{user + system:.2f} µs of writer CPU per write (user {user:.2f}, kernel {system:.2f})"
)
