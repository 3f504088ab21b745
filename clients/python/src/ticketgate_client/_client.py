"""The client: one connection to a ticketgate gateway at a time, made again after every loss
with a fresh ticket, as the JavaScript reference client (client/ticketgate.js) does."""

from __future__ import annotations

import asyncio
import inspect
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Union
from urllib.parse import quote

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from ._feed import Feed

#: The WebSocket subprotocol the client offers and the gateway confirms.
SUBPROTOCOL = "ticketgate.v1"

#: Close codes after which reconnecting cannot help: the application must act.
FATAL_CLOSE_CODES = frozenset({4400, 4401, 4403})

#: The gateway's own `rpc_error` codes; any other error object is the backend's.
GATEWAY_RPC_CODES = frozenset(
    {"upstream_unavailable", "upstream_timeout", "too_many_requests", "upstream_disabled"}
)

State = Literal["idle", "connecting", "authenticating", "authenticated", "reconnecting", "closed"]

#: Returns the user's current JWT, or an awaitable of it.
JwtSource = Callable[[], Union[str, Awaitable[str]]]
#: Returns a subscription token for a channel, or an awaitable of it.
TokenSource = Callable[[str], Union[str, Awaitable[str]]]

Json = dict[str, Any]


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays in seconds: `initial`, then `factor` times longer each time up to
    `max`; `jitter` is the share of each delay that is randomised."""

    initial: float = 0.5
    max: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, step: int) -> float:
        base = min(self.max, self.initial * self.factor**step)
        return base * (1 - self.jitter) + random.random() * base * self.jitter


@dataclass(frozen=True)
class Message:
    """A broadcast (`kind="broadcast"`) or a message for this user (`kind="message"`); or
    `kind="missed"`: the gateway node lost its place in MongoDB's stream, so broadcasts, user
    messages and publications of the channels without history that `data` lists may be gone
    (the subscriptions with history recover by themselves; docs/PROTOCOL.md, "When a node
    loses its place")."""

    kind: Literal["broadcast", "message", "missed"]
    data: Any


@dataclass(frozen=True)
class Publication:
    """A channel's publication; `offset` and `epoch` in a history namespace."""

    channel: str
    data: Any
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True)
class Resync:
    """Publications were lost to a subscription: not recovered after a reconnect (trimmed or
    expired history, a new epoch) or, once, a gap. Reload the channel's state."""

    channel: str
    reason: Literal["not_recovered", "gap"]
    offset: int
    epoch: str


class TicketgateError(Exception):
    """Every error this package raises."""


class TicketError(TicketgateError):
    """`GET /token/ws` refused: `status`, the gateway's `code`, and its `Retry-After`."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None) -> None:
        super().__init__(f"the gateway refused a ticket (HTTP {status} {code}): {message}")
        self.status = status
        self.code = code
        self.retry_after = retry_after


class ChannelError(TicketgateError):
    """A refused request, with the gateway's error `code` (and the `channel` it named)."""

    def __init__(
        self, code: str, message: str, channel: str | None = None, detail: Any = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.channel = channel
        #: A publication refused by the app's backend: its error object.
        self.detail = detail


class RpcError(TicketgateError):
    """A failed `rpc()`: `code` and `message`; `detail` is the backend's error object as it
    wrote it, `None` for the gateway's own errors."""

    def __init__(self, code: Any, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


class ClosedError(TicketgateError):
    """The connection ended for good: the close `code` and `reason`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed with {code}: {reason}")
        self.code = code
        self.reason = reason


async def _resolve(value: str | Awaitable[str]) -> str:
    if inspect.isawaitable(value):
        return await value
    return value


class Subscription:
    """One channel, made by :meth:`Client.subscribe`. Iterate it for its publications."""

    def __init__(self, client: Client, channel: str, get_token: TokenSource | None) -> None:
        self.channel = channel
        self.state: Literal["subscribing", "subscribed", "unsubscribed"] = "subscribing"
        #: History namespaces: the channel's epoch and the offset of the last publication had.
        self.epoch: str | None = None
        self.offset: int | None = None
        #: Made by the server API: not subscribed again by the client after a reconnect.
        self.server = False
        self._client = client
        self._get_token = get_token
        self._publications: Feed[Publication] = Feed()
        self._resyncs: Feed[Resync] = Feed()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A refused ready() nobody awaited is not worth a warning.
        self._ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    @property
    def since(self) -> Json | None:
        """Where this subscription's copy of the channel ends, for a recovering subscribe."""
        if self.epoch is None:
            return None
        return {"offset": self.offset, "epoch": self.epoch}

    async def ready(self) -> None:
        """Returns once subscribed; raises :class:`ChannelError` when refused."""
        await asyncio.shield(self._ready)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Publication:
        return await self._publications.__anext__()

    def resyncs(self) -> AsyncIterator[Resync]:
        """The resync events, when publications could not be recovered."""
        return self._resyncs

    async def presence(self) -> list[dict[str, str]]:
        """Who is subscribed, on every node (namespaces with presence)."""
        reply = await self._client._request({"type": "presence", "channel": self.channel})
        clients: list[dict[str, str]] = reply["clients"]
        return clients

    async def unsubscribe(self) -> None:
        """Leaves the channel; iterations end, and no resubscribe follows."""
        self._client._forget(self)
        self._end(None)
        try:
            await self._client._request({"type": "unsubscribe", "channel": self.channel})
        except (ChannelError, ClosedError):
            pass  # not connected: nothing to leave at the gateway

    def _advance(self, message: Json) -> bool:
        """A publication from the gateway: False when this subscription had it already."""
        offset = message.get("offset")
        epoch = message.get("epoch")
        if offset is None or epoch is None:
            return True
        if epoch == self.epoch and self.offset is not None and offset <= self.offset:
            return False
        gap = epoch == self.epoch and self.offset is not None and offset > self.offset + 1
        self.epoch, self.offset = epoch, offset
        if gap:
            self._resyncs.put(Resync(self.channel, "gap", offset, epoch))
        return True

    def _end(self, error: BaseException | None) -> None:
        self.state = "unsubscribed"
        if not self._ready.done():
            self._ready.set_exception(error or ChannelError("unsubscribed", "unsubscribed"))
        self._publications.end(error)
        self._resyncs.end(error)


@dataclass
class _Pending:
    future: asyncio.Future[Json]
    #: Run on the reply before anything after it is handled (a subscribe's position).
    on_reply: Callable[[Json], None] | None = None


class Client:
    """A ticketgate client. ``await connect()``, then iterate :meth:`messages`, subscribe to
    channels, call :meth:`rpc` and :meth:`publish`."""

    def __init__(
        self,
        base_url: str,
        get_jwt: JwtSource,
        *,
        token_path: str = "/token/ws",
        socket_path: str = "/demo",
        backoff: Backoff = Backoff(),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.state: State = "idle"
        self.user_id: str | None = None
        self.expires_at: int | None = None
        self._get_jwt = get_jwt
        self._token_path = token_path
        self._socket_path = socket_path
        self._backoff = backoff
        self._socket: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._waiters: list[asyncio.Future[None]] = []
        self._subscriptions: dict[str, Subscription] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 1
        self._feeds: list[Feed[Message]] = []
        self._background: set[asyncio.Task[None]] = set()
        #: Why the client stopped for good, raised by every later request.
        self._ending: TicketgateError | None = None

    # The public API.

    async def connect(self) -> None:
        """Connects (and keeps reconnecting); returns once authenticated."""
        if self.state == "authenticated":
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._task is None or self._task.done():
            self._stopped = False
            self._ending = None
            self._task = asyncio.create_task(self._run())
        await waiter

    async def close(self) -> None:
        """Closes for good: iterations end, and nothing reconnects."""
        self._stopped = True
        socket = self._socket
        if socket is not None:
            await socket.close(1000, "client closed")
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._finish(None)

    def messages(self) -> AsyncIterator[Message]:
        """Broadcasts and messages for this user, from now on, until the client closes."""
        feed: Feed[Message] = Feed()
        if self.state == "closed":
            feed.end()
        self._feeds.append(feed)
        return feed

    def subscribe(self, channel: str, *, get_token: TokenSource | None = None) -> Subscription:
        """Subscribes to `channel` now (or once authenticated) and after every reconnect.
        `get_token`, when given, returns a subscription token for the channel."""
        subscription = self._subscriptions.get(channel)
        if subscription is None:
            subscription = Subscription(self, channel, get_token)
            self._subscriptions[channel] = subscription
            if self.state == "authenticated":
                self._spawn(self._subscribe(subscription, refresh=False))
        return subscription

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Calls `method` on the app's backend; its result, or :class:`RpcError`."""
        try:
            reply = await self._request({"type": "rpc", "method": method, "data": data})
        except ChannelError as error:
            raise RpcError(error.code, error.message) from None
        if reply.get("type") == "rpc_error":
            failure = reply.get("error") or {}
            code = failure.get("code")
            message = str(failure.get("message", code))
            own = code in GATEWAY_RPC_CODES and set(failure) <= {"code", "message"}
            raise RpcError(code, message, None if own else failure)
        return reply.get("result")

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        """Publishes into `channel`: `{"offset", "epoch"}` in a history namespace, `{}`
        elsewhere; :class:`ChannelError` when refused."""
        reply = await self._request({"type": "publish", "channel": channel, "data": data})
        return {key: reply[key] for key in ("offset", "epoch") if key in reply}

    # Connecting.

    async def _run(self) -> None:
        attempt = 0
        step = 0
        while not self._stopped:
            self._set_state("connecting" if attempt == 0 else "reconnecting")
            retry_after: float | None = None
            try:
                jwt = await _resolve(self._get_jwt())
                ticket = await self._fetch_ticket(jwt)
            except TicketError as error:
                # A refused JWT does not get better by retrying; an outage might.
                if error.status in (401, 403):
                    self._finish(error)
                    return
                retry_after = error.retry_after
            except (httpx.HTTPError, OSError, ValueError):
                pass
            else:
                code, reason, authenticated = await self._session(ticket, jwt)
                if authenticated:
                    step = 0
                if code in FATAL_CLOSE_CODES:
                    self._finish(ClosedError(code, reason))
                    return
            if self._stopped:
                return
            attempt += 1
            if retry_after is not None:
                # At least what the gateway asked, with jitter; the backoff does not grow.
                delay = retry_after * (1 + random.random() * self._backoff.jitter)
            else:
                delay = self._backoff.delay(step)
                step += 1
            self._set_state("reconnecting")
            await asyncio.sleep(delay)

    async def _fetch_ticket(self, jwt: str) -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.get(
                self.base_url + self._token_path, headers={"Authorization": f"Bearer {jwt}"}
            )
        try:
            body = response.json()
        except ValueError:
            body = {}
        token = body.get("token") if isinstance(body, dict) else None
        if response.status_code != 200 or not isinstance(token, str):
            retry_after = response.headers.get("retry-after")
            raise TicketError(
                response.status_code,
                str(body.get("error", "unknown")) if isinstance(body, dict) else "unknown",
                str(body.get("message", "")) if isinstance(body, dict) else "",
                float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        return token

    async def _session(self, ticket: str, jwt: str) -> tuple[int, str, bool]:
        """One connection, from the upgrade to its end: its close code and reason, and
        whether it authenticated."""
        url = self.base_url.replace("http", "ws", 1) + self._socket_path + "?token=" + quote(ticket)
        authenticated = False
        try:
            async with ws_connect(
                url,
                subprotocols=[Subprotocol(SUBPROTOCOL)],
                open_timeout=10,
                ping_interval=20,
                ping_timeout=10,
                max_size=None,
            ) as socket:
                self._socket = socket
                self._set_state("authenticating")
                await socket.send(json.dumps({"type": "jwt", "token": jwt}))
                try:
                    async for raw in socket:
                        authenticated |= self._on_message(raw)
                except ConnectionClosed:
                    pass
                code = socket.close_code if socket.close_code is not None else 1006
                reason = socket.close_reason or ""
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError, ConnectionClosed):
            code, reason = 1006, ""
        finally:
            self._socket = None
            self._disconnected()
        return code, reason, authenticated

    def _disconnected(self) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(
                    ChannelError("not_connected", "the connection closed")
                )
        self._pending.clear()
        for subscription in self._subscriptions.values():
            subscription.state = "subscribing"

    def _finish(self, error: TicketgateError | None) -> None:
        """Stops for good: with `error` (a fatal close, a refused JWT) everything waiting
        raises it; without (close()), iterations end."""
        self._stopped = True
        self._set_state("closed")
        ending = error if error is not None else ClosedError(1000, "client closed")
        self._ending = ending
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(ending)
        self._waiters.clear()
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ending)
        self._pending.clear()
        for feed in self._feeds:
            feed.end(error)
        for subscription in self._subscriptions.values():
            subscription._end(error)
        self._subscriptions.clear()

    # Messages from the gateway.

    def _on_message(self, raw: str | bytes) -> bool:
        """Handles one message; True when it authenticated this connection."""
        try:
            message = json.loads(raw)
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        request_id = message.get("id")
        if isinstance(request_id, int) and request_id in self._pending:
            pending = self._pending.pop(request_id)
            if message.get("type") == "error":
                pending.future.set_exception(
                    ChannelError(
                        str(message.get("error")),
                        str(message.get("message", "")),
                        message.get("channel"),
                        message.get("detail"),
                    )
                )
            else:
                if pending.on_reply is not None:
                    pending.on_reply(message)
                pending.future.set_result(message)
            return False
        kind = message.get("type")
        if kind == "authenticated":
            first = self.state != "authenticated"
            self.user_id = message.get("user_id")
            self.expires_at = message.get("expires_at")
            if first:
                self._set_state("authenticated")
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                self._waiters.clear()
                # A new connection holds nothing: every subscription the app asked for is
                # made again (server-made ones are the server's to make again).
                for channel, subscription in list(self._subscriptions.items()):
                    if subscription.server:
                        del self._subscriptions[channel]
                    else:
                        self._spawn(self._subscribe(subscription, refresh=False))
            return first
        if kind == "token_expiring":
            self._spawn(self._refresh())
        elif kind in ("broadcast", "message"):
            for feed in self._feeds:
                feed.put(Message("broadcast" if kind == "broadcast" else "message", message.get("data")))
        elif kind == "missed":
            for feed in self._feeds:
                feed.put(Message("missed", list(message.get("channels") or [])))
        elif kind == "publication":
            receiving = self._subscriptions.get(str(message.get("channel")))
            if receiving is not None and receiving._advance(message):
                receiving._publications.put(
                    Publication(
                        receiving.channel,
                        message.get("data"),
                        message.get("offset"),
                        message.get("epoch"),
                    )
                )
        elif kind == "subscribed":
            # Unasked: the server API subscribed this user.
            channel = str(message.get("channel"))
            made = self._subscriptions.get(channel)
            if made is None:
                made = Subscription(self, channel, None)
                self._subscriptions[channel] = made
            made.server = True
            self._subscribed(made, message, refresh=False)
        elif kind == "unsubscribed":
            channel = str(message.get("channel"))
            if message.get("reason") == "resubscribe" and channel in self._subscriptions:
                # The node may have missed publications: subscribe again from the last offset
                # had, and recovery fills the gap.
                again = self._subscriptions[channel]
                again.state = "subscribing"
                self._spawn(self._subscribe(again, refresh=False))
                return False
            ended = self._subscriptions.pop(channel, None)
            if ended is not None:
                ended._end(None)
        elif kind == "subscription_expiring":
            expiring = self._subscriptions.get(str(message.get("channel")))
            if expiring is not None and expiring._get_token is not None:
                self._spawn(self._subscribe(expiring, refresh=True))
        return False

    async def _refresh(self) -> None:
        try:
            jwt = await _resolve(self._get_jwt())
        except Exception:  # noqa: BLE001 - the app's callback; the expiry will close instead
            return
        await self._send({"type": "jwt", "token": jwt})

    # Requests.

    async def _request(self, message: Json, on_reply: Callable[[Json], None] | None = None) -> Json:
        if self._ending is not None:
            raise self._ending
        if self.state != "authenticated" or self._socket is None:
            raise ChannelError("not_connected", "the client is not connected", message.get("channel"))
        request_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, on_reply)
        await self._send({**message, "id": request_id})
        return await future

    async def _send(self, message: Json) -> None:
        socket = self._socket
        if socket is None:
            return
        try:
            await socket.send(json.dumps(message))
        except ConnectionClosed:
            pass  # the session's loop sees the close

    async def _subscribe(self, subscription: Subscription, refresh: bool) -> None:
        message: Json = {"type": "subscribe", "channel": subscription.channel}
        since = None if refresh else subscription.since
        if since is not None:
            message["since"] = since
        if subscription._get_token is not None:
            try:
                message["token"] = await _resolve(subscription._get_token(subscription.channel))
            except Exception:  # noqa: BLE001 - the app's callback: the subscription waits
                return
        if self._subscriptions.get(subscription.channel) is not subscription:
            return
        try:
            await self._request(
                message, lambda reply: self._subscribed(subscription, reply, refresh)
            )
        except ChannelError as error:
            if error.code == "not_connected":
                return  # made again after the reconnect
            if error.code == "unavailable":
                # MongoDB busy or away for a moment: asked again on this connection.
                socket = self._socket
                await asyncio.sleep(self._backoff.delay(0))
                if self._socket is socket and self._subscriptions.get(subscription.channel) is subscription:
                    await self._subscribe(subscription, refresh)
                return
            self._subscriptions.pop(subscription.channel, None)
            subscription._end(error)
        except ClosedError:
            return

    def _subscribed(self, subscription: Subscription, reply: Json, refresh: bool) -> None:
        """A `subscribed` reply, handled before the recovered publications that follow it."""
        subscription.state = "subscribed"
        recovered = reply.get("recovered")
        if "epoch" in reply and (subscription.server or (not refresh and recovered is not True)):
            # A first subscribe, or what was missed is gone: live from the reply's position.
            subscription.epoch = reply["epoch"]
            subscription.offset = reply.get("offset")
        if not subscription._ready.done():
            subscription._ready.set_result(None)
        if recovered is False:
            subscription._resyncs.put(
                Resync(subscription.channel, "not_recovered", reply.get("offset", 0), reply.get("epoch", ""))
            )

    def _forget(self, subscription: Subscription) -> None:
        if self._subscriptions.get(subscription.channel) is subscription:
            del self._subscriptions[subscription.channel]

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _set_state(self, state: State) -> None:
        self.state = state
