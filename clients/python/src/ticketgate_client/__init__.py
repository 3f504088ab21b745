"""ticketgate-client: an asyncio client for the ticketgate gateway (docs/PROTOCOL.md), with the
behaviour of the JavaScript reference client (client/ticketgate.js)."""

from ._client import (
    FATAL_CLOSE_CODES,
    SUBPROTOCOL,
    Backoff,
    ChannelError,
    Client,
    ClosedError,
    JwtSource,
    Message,
    Publication,
    Resync,
    RpcError,
    State,
    Subscription,
    TicketError,
    TicketgateError,
    TokenSource,
)

__all__ = [
    "FATAL_CLOSE_CODES",
    "SUBPROTOCOL",
    "Backoff",
    "ChannelError",
    "Client",
    "ClosedError",
    "JwtSource",
    "Message",
    "Publication",
    "Resync",
    "RpcError",
    "State",
    "Subscription",
    "TicketError",
    "TicketgateError",
    "TokenSource",
]
