#!/usr/bin/env python3
"""An authenticating proxy between the Autobahn|Testsuite fuzzing client and ticketgate.

Autobahn speaks plain RFC 6455 to a server that echoes; ticketgate needs a ticket for the
upgrade and a JWT as the first message, and does not echo raw frames. For each connection
this proxy mints a ticket, upgrades to the gateway with Autobahn's own Sec-WebSocket-Key (so
the gateway's 101 is valid for Autobahn), sends the JWT frame itself, swallows the
`authenticated` message, and from then on copies bytes both ways untouched: every frame
Autobahn sends reaches the gateway as sent, and every frame the gateway sends reaches
Autobahn. Cases that expect an echo of a data message fail by design (docs/SECURITY.md).

    autobahn-proxy.py LISTEN_PORT GATEWAY_PORT JWT
"""
import asyncio
import json
import os
import struct
import sys
import urllib.request

LISTEN, GATEWAY, JWT = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def ticket():
    req = urllib.request.Request(
        f"http://127.0.0.1:{GATEWAY}/token/ws", headers={"Authorization": f"Bearer {JWT}"}
    )
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)["token"]


def masked_text_frame(text):
    payload = text.encode()
    mask = os.urandom(4)
    head = bytes([0x81])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def read_head(reader):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await reader.read(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1"), rest


async def read_frame(reader, buffered):
    """One unmasked server frame: (opcode, payload, the bytes after it)."""
    data = buffered
    while True:
        if len(data) >= 2:
            n = data[1] & 0x7F
            offset = 2
            if n == 126 and len(data) >= 4:
                n, offset = struct.unpack("!H", data[2:4])[0], 4
            elif n == 127 and len(data) >= 10:
                n, offset = struct.unpack("!Q", data[2:10])[0], 10
            if n < 126 or offset > 2:
                if len(data) >= offset + n:
                    return data[0] & 0x0F, data[offset : offset + n], data[offset + n :]
        chunk = await reader.read(4096)
        if not chunk:
            raise ConnectionError("closed before the authenticated message")
        data += chunk


async def pipe(reader, writer):
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_reader, client_writer):
    try:
        head, early = await read_head(client_reader)
        lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        key = headers.get("sec-websocket-key", "")
        token = await asyncio.get_running_loop().run_in_executor(None, ticket)
        gw_reader, gw_writer = await asyncio.open_connection("127.0.0.1", GATEWAY)
        gw_writer.write(
            (
                f"GET /demo?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{GATEWAY}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {key}\r\n\r\n"
            ).encode()
            + masked_text_frame(json.dumps({"type": "jwt", "token": JWT}))
        )
        gw_head, rest = await read_head(gw_reader)
        opcode, payload, rest = await read_frame(gw_reader, rest)
        assert opcode == 1 and b"authenticated" in payload, payload
        client_writer.write(gw_head.encode("latin-1") + b"\r\n\r\n" + rest)
        gw_writer.write(early)
        await asyncio.gather(pipe(client_reader, gw_writer), pipe(gw_reader, client_writer))
    except Exception as e:  # one case's connection; the others go on
        print(f"autobahn-proxy: {e}", file=sys.stderr)
        client_writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    async with server:
        await server.serve_forever()


asyncio.run(main())
