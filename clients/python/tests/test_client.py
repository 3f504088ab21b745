"""The Python client against real gateway processes and a real mongod."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest

from conftest import Gateways, mint_jwt
from ticketgate_client import (
    Backoff,
    ChannelError,
    Client,
    ClosedError,
    Message,
    Publication,
    RpcError,
    Subscription,
    TicketError,
)

T = TypeVar("T")
FAST = Backoff(initial=0.1, max=1.0, factor=2.0, jitter=0.5)
UPSTREAM_KEY = "python-client-upstream-key-0123456789"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(scenario(), 90)

    asyncio.run(bounded())


async def within(awaitable: Awaitable[T], seconds: float = 15) -> T:
    return await asyncio.wait_for(awaitable, seconds)


async def take(iterator: Any, count: int) -> list[Any]:
    items = []
    for _ in range(count):
        items.append(await within(iterator.__anext__()))
    return items


async def nothing_twice_nothing_lost(feed: Subscription) -> None:
    """No publication follows (nothing twice), and no resync came (nothing lost)."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(feed.__anext__(), 0.5)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(feed.resyncs().__anext__(), 0.1)


class Backend(BaseHTTPRequestHandler):
    """The app's backend for RPCs: `add` answers the sum, anything else the backend's error."""

    def do_POST(self) -> None:
        call = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if call["method"] == "add":
            answer: dict[str, Any] = {"result": call["data"]["a"] + call["data"]["b"]}
        else:
            answer = {"error": {"code": 42, "message": "refused", "why": call["method"]}}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_connects_and_carries_messages_rpc_and_publish(gateways: Gateways, backend: str) -> None:
    gw = gateways.start(UPSTREAM_URL=backend, UPSTREAM_KEY=UPSTREAM_KEY)

    async def scenario() -> None:
        jwt = mint_jwt("alice", publish=["talk:*"])
        client = Client(gw.base_url, lambda: jwt, backoff=FAST)
        assert client.state == "idle"
        await within(client.connect())
        assert (client.state, client.user_id) == ("authenticated", "alice")
        messages = client.messages()
        status, body = gw.api("POST", "/api/broadcast", {"data": {"hello": "all"}})
        assert status == 202, body
        gw.api("POST", "/api/users/alice/messages", {"data": "just you"})
        # Broadcasts and user messages travel apart at the gateway: either may come first.
        got = await take(messages, 2)
        assert sorted(got, key=lambda m: m.kind) == [
            Message("broadcast", {"hello": "all"}),
            Message("message", "just you"),
        ]
        assert await within(client.rpc("add", {"a": 2, "b": 40})) == 42
        with pytest.raises(RpcError) as refused:
            await within(client.rpc("nope", None))
        assert refused.value.code == 42
        assert refused.value.detail == {"code": 42, "message": "refused", "why": "nope"}
        first = await within(client.publish("talk:1", {"n": 1}))
        second = await within(client.publish("talk:1", {"n": 2}))
        assert (first["offset"], second["offset"]) == (1, 2)
        assert first["epoch"] == second["epoch"]
        with pytest.raises(ChannelError) as denied:
            await within(client.publish("feed:1", {"n": 1}))
        assert denied.value.code == "permission_denied"
        await client.close()
        assert client.state == "closed"
        with pytest.raises(StopAsyncIteration):
            await within(messages.__anext__())

    run(scenario)


def test_channels_presence_refusals_and_unsubscribe(gateways: Gateways) -> None:
    gw = gateways.start()

    async def scenario() -> None:
        client = Client(gw.base_url, lambda: mint_jwt("bob", channels=["room:*"]), backoff=FAST)
        feed = client.subscribe("feed:1")  # before connecting: made once authenticated
        await within(client.connect())
        await within(feed.ready())
        for n in (1, 2):
            gw.api("POST", "/api/channels/feed:1/publish", {"data": {"n": n}})
        got = await take(feed, 2)
        assert [(p.offset, p.data) for p in got] == [(1, {"n": 1}), (2, {"n": 2})]
        assert all(isinstance(p, Publication) and p.channel == "feed:1" for p in got)

        # A state channel: its latest publication first, as an ordinary one.
        for price in (1.07, 1.08):
            gw.api("POST", "/api/channels/price:eur/publish", {"data": price})
        price_sub = client.subscribe("price:eur")
        await within(price_sub.ready())
        latest = await take(price_sub, 1)
        assert [(p.offset, p.data) for p in latest] == [(2, 1.08)]

        room = client.subscribe("room:lobby")
        await within(room.ready())
        clients = await within(room.presence())
        assert [c["user_id"] for c in clients] == ["bob"]

        refused = client.subscribe("nowhere:1")
        with pytest.raises(ChannelError) as error:
            await within(refused.ready())
        assert error.value.code == "unknown_namespace"

        await within(feed.unsubscribe())
        with pytest.raises(StopAsyncIteration):
            await within(feed.__anext__())
        await client.close()

    run(scenario)


def test_reconnects_across_a_sigkill_and_recovers_what_it_missed_in_order(gateways: Gateways) -> None:
    gw = gateways.start()
    other = gateways.beside(gw)

    async def scenario() -> None:
        client = Client(gw.base_url, lambda: mint_jwt("carol"), backoff=FAST)
        await within(client.connect())
        feed = client.subscribe("feed:live")
        await within(feed.ready())
        publish = lambda n: other.api("POST", "/api/channels/feed:live/publish", {"data": n})
        for n in (1, 2, 3):
            publish(n)
        assert [p.data for p in await take(feed, 3)] == [1, 2, 3]

        gw.kill()
        for n in (4, 5, 6):
            assert publish(n)[0] == 202
        await asyncio.to_thread(gw.launch)
        publish(7)
        got = await take(feed, 4)
        assert [(p.offset, p.data) for p in got] == [(4, 4), (5, 5), (6, 6), (7, 7)]
        assert client.state == "authenticated"
        await nothing_twice_nothing_lost(feed)
        await client.close()

    run(scenario)


def test_stops_on_4403_and_a_refused_jwt_without_looping(gateways: Gateways) -> None:
    gw = gateways.start()

    async def scenario() -> None:
        client = Client(gw.base_url, lambda: mint_jwt("dave"), backoff=FAST)
        await within(client.connect())
        messages = client.messages()
        feed = client.subscribe("feed:2")
        await within(feed.ready())
        gw.api("POST", "/api/users/dave/disconnect")
        with pytest.raises(ClosedError) as closed:
            await within(messages.__anext__())
        assert (closed.value.code, closed.value.reason) == (4403, "disconnected by the server")
        with pytest.raises(ClosedError):
            await within(feed.__anext__())
        assert client.state == "closed"
        with pytest.raises(ClosedError):
            await within(client.rpc("add", {"a": 1, "b": 1}))

        refused = Client(gw.base_url, lambda: "not-a-jwt", backoff=FAST)
        with pytest.raises(TicketError) as ticket:
            await within(refused.connect())
        assert ticket.value.status == 401
        assert refused.state == "closed"

    run(scenario)


def test_refreshes_in_band_and_a_foreign_refresh_closes_with_4401(gateways: Gateways) -> None:
    gw = gateways.start(TOKEN_REFRESH_NOTICE_SECS="2")

    async def scenario() -> None:
        calls = 0

        async def get_jwt() -> str:
            nonlocal calls
            calls += 1
            return mint_jwt("erin", 3 if calls == 1 else 600)

        client = Client(gw.base_url, get_jwt, backoff=FAST)
        await within(client.connect())
        first = client.expires_at
        assert first is not None
        await asyncio.sleep(3.5)  # past the first token's exp
        assert client.state == "authenticated"
        assert client.expires_at is not None and client.expires_at > first + 500
        await client.close()

        tokens = iter([mint_jwt("frank", 3), mint_jwt("mallory", 600)])
        foreign = Client(gw.base_url, lambda: next(tokens), backoff=FAST)
        await within(foreign.connect())
        messages = foreign.messages()
        with pytest.raises(ClosedError) as closed:
            await within(messages.__anext__())
        assert closed.value.code == 4401

    run(scenario)


def test_a_token_subscription_is_refreshed_before_its_token_runs_out(gateways: Gateways) -> None:
    gw = gateways.start()

    async def scenario() -> None:
        issued = 0

        def token(channel: str) -> str:
            nonlocal issued
            issued += 1
            return mint_jwt("gina", 3 if issued == 1 else 600, channel=channel)

        client = Client(gw.base_url, lambda: mint_jwt("gina"), backoff=FAST)
        await within(client.connect())
        room = client.subscribe("room:private", get_token=token)
        await within(room.ready())
        await asyncio.sleep(4)  # past the first token's exp: refreshed in place
        assert issued >= 2
        gw.api("POST", "/api/channels/room:private/publish", {"data": "still here"})
        assert [p.data for p in await take(room, 1)] == ["still here"]
        await client.close()

    run(scenario)


def test_a_node_that_lost_its_place_resubscribes_history_and_says_what_was_missed(gateways: Gateways) -> None:
    gw = gateways.start()
    other = gateways.beside(gw)

    async def scenario() -> None:
        client = Client(gw.base_url, lambda: mint_jwt("erin"), backoff=FAST)
        await within(client.connect())
        messages = client.messages()
        feed = client.subscribe("feed:lost")
        plain = client.subscribe("plain:lost")
        await within(feed.ready())
        await within(plain.ready())
        publish = lambda n: other.api("POST", "/api/channels/feed:lost/publish", {"data": n})
        assert publish(1)[0] == 202
        assert [p.data for p in await take(feed, 1)] == [1]

        # The node's stream is held, then loses its place; what is published meanwhile
        # reaches the node only through the resubscribe's recovery.
        await asyncio.to_thread(gw.lose_stream_place, 2000)
        await asyncio.sleep(0.7)
        for n in (2, 3):
            assert publish(n)[0] == 202
        missed = await within(messages.__anext__())
        assert missed == Message("missed", ["plain:lost"])
        got = await take(feed, 2)
        assert [(p.offset, p.data) for p in got] == [(2, 2), (3, 3)]
        assert feed.state == "subscribed" and plain.state == "subscribed"
        assert publish(4)[0] == 202
        assert [p.data for p in await take(feed, 1)] == [4]
        await nothing_twice_nothing_lost(feed)
        await client.close()

    run(scenario)
