"""Real gateway processes for the client's tests: the binary from TICKETGATE_BIN and MongoDB
from MONGODB_URI, both given by the Rust test that runs this suite
(tests/api/client_python.rs). Every process a test starts is killed when it ends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

SECRET = "python-client-test-secret-0123456789abcdef"
API_KEY = "python-client-test-api-key-0123456789"
BIN = os.environ.get("TICKETGATE_BIN")
MONGODB_URI = os.environ.get("MONGODB_URI")

NAMESPACES = """
[[channels.namespaces]]
name = "feed"
public = true
history_size = 100
history_ttl_secs = 600
[[channels.namespaces]]
name = "room"
presence = true
[[channels.namespaces]]
name = "talk"
public = true
client_publish = true
history_size = 50
history_ttl_secs = 600
[[channels.namespaces]]
name = "plain"
public = true
[[channels.namespaces]]
name = "price"
public = true
history_size = 1
history_ttl_secs = 600
deliver_latest = true
"""


def mint_jwt(sub: str, ttl: int = 3600, **claims: Any) -> str:
    """An HS256 JWT for `sub`, valid for `ttl` seconds."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": sub, "iat": now, "exp": now + ttl, **claims}).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Gateway:
    """A gateway on a fixed port, which can be killed and started again on the same port."""

    def __init__(self, database: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        #: The name this gateway gives MongoDB, so a fail point can aim at it alone.
        self.app_name = f"tg-py-{secrets.token_hex(4)}"
        uri = MONGODB_URI or ""
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "BIND_ADDR": f"127.0.0.1:{self.port}",
            "JWT_SECRET": SECRET,
            "JWT_LEEWAY_SECS": "0",
            "API_KEY": API_KEY,
            "MONGODB_URI": f"{uri}{'&' if '?' in uri else '/?'}appName={self.app_name}",
            "MONGODB_DATABASE": database,
            "STORE_TIMEOUT_MS": "10000",
            "RUST_LOG": "info",
            **env,
        }
        # The test run's marker, so scripts/test.sh can name anything left running.
        if "TICKETGATE_TEST_RUN" in os.environ:
            self.env["TICKETGATE_TEST_RUN"] = os.environ["TICKETGATE_TEST_RUN"]
        self.log = tempfile.NamedTemporaryFile(prefix="ticketgate-py-", suffix=".log", delete=False)
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        start = os.path.getsize(self.log.name)
        self.process = subprocess.Popen([BIN or ""], env=self.env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 20
        while True:
            with open(self.log.name, "rb") as log:
                log.seek(start)
                if b"listening on" in log.read():
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{open(self.log.name).read()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def lose_stream_place(self, block_ms: int) -> None:
        """Makes MongoDB hold this gateway's next change-stream read for `block_ms`, then
        answer ChangeStreamHistoryLost (286), as when the stream's point fell off the oplog:
        what is written meanwhile is lost to the stream (docs/PROTOCOL.md, "When a node loses
        its place"). Needs a mongod with test commands (the suite's own has them)."""
        from pymongo import MongoClient

        with MongoClient(MONGODB_URI) as mongo:
            mongo.admin.command(
                {
                    "configureFailPoint": "failCommand",
                    "mode": {"times": 1},
                    "data": {
                        "failCommands": ["getMore"],
                        "errorCode": 286,
                        "blockConnection": True,
                        "blockTimeMS": block_ms,
                        "appName": self.app_name,
                    },
                }
            )

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        response = httpx.request(
            method,
            self.base_url + path,
            headers={"Authorization": f"Bearer {API_KEY}"},
            json=body,
            timeout=15,
        )
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None


class Gateways:
    """Starts gateways (several on one database make a cluster) and kills them all at the end."""

    def __init__(self) -> None:
        self.started: list[Gateway] = []
        self.config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
        self.config.write(NAMESPACES)
        self.config.close()

    def start(self, database: str | None = None, **env: str) -> Gateway:
        gateway = Gateway(database or f"tg_py_{secrets.token_hex(5)}", {"CONFIG_FILE": self.config.name, **env})
        gateway.launch()
        self.started.append(gateway)
        return gateway

    def beside(self, other: Gateway, **env: str) -> Gateway:
        return self.start(other.env["MONGODB_DATABASE"], **env)


@pytest.fixture
def gateways() -> Iterator[Gateways]:
    if not BIN or not MONGODB_URI:
        raise RuntimeError(
            "run through `cargo test` (tests/api/client_python.rs), which sets TICKETGATE_BIN and MONGODB_URI"
        )
    started = Gateways()
    try:
        yield started
    finally:
        for gateway in started.started:
            gateway.kill()
