export type State = "idle" | "connecting" | "authenticating" | "authenticated" | "reconnecting" | "closed";

/** The WebSocket subprotocol the client offers and the gateway confirms. */
export declare const SUBPROTOCOL: "ticketgate.v1";
export declare const FATAL_CLOSE_CODES: readonly number[];
/** How long, after a WebSocket failed before opening, reconnects in the page go straight to SSE (10 minutes). */
export declare const SSE_STICKY_MS: number;

/** `websocket`, or Server-Sent Events with messages sent by POST (docs/PROTOCOL.md, "Transports"). */
export type Transport = "websocket" | "sse";

export interface Backoff {
  initialMs?: number;
  maxMs?: number;
  factor?: number;
  /** 0..1: the share of each delay that is randomised. */
  jitter?: number;
}

export interface ClientOptions {
  getJwt: () => string | Promise<string>;
  baseUrl?: string;
  tokenPath?: string;
  socketPath?: string;
  /** The event stream's path (default `/sse`). */
  ssePath?: string;
  /** Where client messages are posted on SSE (default `/sse/messages`). */
  sseMessagesPath?: string;
  /**
   * The transports to use, in order (default `["websocket", "sse"]`): a WebSocket that fails
   * before it opens (an error, a refused upgrade, no open within `websocketTimeoutMs`) is
   * replaced at once by SSE with a fresh ticket, and for ten minutes after that every
   * reconnect in the page goes straight to SSE. Over HTTP/1.1 each SSE tab holds one of the
   * browser's six connections per origin: serve the gateway over HTTP/2 at the proxy.
   */
  transports?: Transport[];
  /** A WebSocket not open after this long has failed (default 5000). */
  websocketTimeoutMs?: number;
  pingIntervalMs?: number;
  pongTimeoutMs?: number;
  backoff?: Backoff;
  WebSocket?: unknown;
  /** An EventSource implementation (browsers have one; Node: the `eventsource` package). */
  EventSource?: unknown;
  /**
   * One gateway connection per gateway and user for all of the browser's tabs on this origin,
   * held in a SharedWorker (`ticketgate-worker.js`, beside this module). Each tab keeps this
   * API; a channel several tabs subscribe is one subscription at the gateway, and each tab gets
   * the events of its own channels and the answers to its own requests. Where SharedWorker is
   * missing, or the worker script is on another origin than the page, each tab connects on
   * its own.
   */
  shared?: boolean;
  /** The worker script for `shared` (default: `ticketgate-worker.js` beside this module). */
  workerUrl?: string | URL;
  fetch?: typeof fetch;
}

export declare class TicketError extends Error {
  status: number;
  code: string;
  /** The wait the gateway asked for with `Retry-After` (429 and 503 answers), or null. */
  retryAfterMs: number | null;
}

/** A refused channel request, with the gateway's error code (docs/PROTOCOL.md, "Channels"). */
export declare class ChannelError extends Error {
  code:
    | "invalid_channel"
    | "unknown_namespace"
    | "permission_denied"
    | "too_many_subscriptions"
    | "not_subscribed"
    | "presence_disabled"
    | "bad_message"
    | "unavailable"
    | "not_connected"
    | "publication_too_large"
    | "upstream_unavailable"
    | "upstream_timeout"
    | string;
  channel?: string;
  /** A publication refused by the app's backend: its error object. */
  detail?: unknown;
}

/** A failed `rpc()`: the backend's error object, or the gateway's (docs/PROTOCOL.md, "Upstream"). */
export declare class RpcError extends Error {
  code:
    | "upstream_unavailable"
    | "upstream_timeout"
    | "too_many_requests"
    | "upstream_disabled"
    | "not_connected"
    | string
    | number;
  /** The error object as it came, with any fields the backend added. */
  error: { code: string | number; message: string; [field: string]: unknown };
}

export interface PresenceClient {
  user_id: string;
  /** Unique in the cluster: `c<n>@<node id>`. */
  connection_id: string;
  node: string;
}

export interface SubscribeOptions {
  /** Returns a subscription token (a JWT with a `channel` claim) for a channel the user's JWT does not grant. */
  getToken?: (channel: string) => string | Promise<string>;
}

export type UnsubscribeReason = "permission_lost" | "token_expired" | "revoked" | "server";

export interface SubscriptionEvents {
  /**
   * In a history namespace, `offset` and `epoch` give the channel's position, and after a
   * reconnect `recovered` says whether every missed publication follows (true) or not (false,
   * with a `resync` event too).
   */
  subscribed: CustomEvent<{
    channel: string;
    refreshed?: boolean;
    server?: boolean;
    recovered?: boolean;
    offset?: number;
    epoch?: string;
  }>;
  /** In offset order, none twice across reconnects; `offset` and `epoch` in history namespaces. */
  publication: CustomEvent<{ channel: string; data: unknown; offset?: number; epoch?: string }>;
  /**
   * Publications were lost to this subscription: they could not be recovered after a
   * reconnect (`not_recovered`: trimmed or expired history, a new epoch), or one never arrived
   * (`gap`). Reload the channel's state from the app's backend.
   */
  resync: CustomEvent<{ channel: string; reason: "not_recovered" | "gap"; offset: number; epoch: string }>;
  /** The server ended the subscription; `reason` says why. */
  unsubscribed: CustomEvent<{ channel: string; reason?: UnsubscribeReason }>;
  /**
   * A subscribe was refused. With `retrying` (the gateway said `unavailable`: MongoDB busy or
   * away) the subscription stays and is asked for again after `delayMs`; otherwise it ended.
   */
  error: CustomEvent<{ error: ChannelError | unknown; retrying?: boolean; delayMs?: number }>;
  join: CustomEvent<{ userId: string; connectionId: string }>;
  leave: CustomEvent<{ userId: string; connectionId: string }>;
  /** The subscription token runs out soon; with `getToken`, a fresh one is sent at once. */
  expiring: CustomEvent<{ expiresAt: number }>;
}

export declare class Subscription extends EventTarget {
  readonly channel: string;
  readonly state: "subscribing" | "subscribed" | "unsubscribed";
  /** Made by the server API; not made again by the client after a reconnect. */
  readonly server: boolean;
  /** History namespaces: the channel's epoch, and the offset of the last publication had. */
  readonly epoch: string | null;
  readonly offset: number | null;
  /** What a reconnect recovers from (`null` outside history namespaces). */
  readonly since: { offset: number; epoch: string } | null;
  presence(): Promise<{ clients: PresenceClient[] }>;
  unsubscribe(): Promise<void>;
  addEventListener<K extends keyof SubscriptionEvents>(type: K, listener: (event: SubscriptionEvents[K]) => void): void;
}

export interface ClientEvents {
  state: CustomEvent<{ state: State }>;
  authenticated: CustomEvent<{ userId: string; expiresAt: number; refreshed: boolean }>;
  token_expiring: CustomEvent<{ expiresAt: number }>;
  /** `seq` counts the broadcasts of the publishing `node` (one series per node id). */
  broadcast: CustomEvent<{ seq: number; node: string; data: unknown }>;
  message: CustomEvent<{ data: unknown }>;
  close: CustomEvent<{ code: number; reason: string }>;
  /** `retryAfterMs`: the wait the gateway asked for (`Retry-After`), which replaces the backoff. */
  reconnecting: CustomEvent<{ attempt: number; delayMs: number; retryAfterMs: number | null }>;
  error: CustomEvent<{ error: unknown }>;
  pong: CustomEvent<{ type: "pong" }>;
  echo: CustomEvent<{ type: "echo"; data: unknown }>;
  /** The server API subscribed this user to a channel. */
  subscription: CustomEvent<{ subscription: Subscription }>;
  /** The WebSocket failed before it opened; the client is opening SSE instead. */
  fallback: CustomEvent<{ from: "websocket"; to: "sse" }>;
  /**
   * The gateway node lost its place in MongoDB's stream: broadcasts, user messages and the
   * publications of these subscribed channels without history may be gone (the channels with
   * history are resubscribed with `since` by the client itself).
   */
  missed: CustomEvent<{ channels: string[] }>;
}

export declare class TicketgateClient extends EventTarget {
  constructor(options: ClientOptions);
  readonly state: State;
  readonly userId: string | null;
  readonly expiresAt: number | null;
  /** The current connection's transport (null before the first). */
  readonly transport: Transport | null;
  /** True when this tab uses the connection shared by all tabs (`shared: true`). */
  readonly shared?: boolean;
  connect(): Promise<{ userId: string; expiresAt: number }>;
  close(code?: number, reason?: string): void;
  echo(data: unknown): void;
  ping(): void;
  /** Subscribes now (or once authenticated) and again after every reconnect. */
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  /** Publishes into a channel of a `client_publish` namespace; rejects with a ChannelError. */
  publish(channel: string, data: unknown): Promise<{ offset?: number; epoch?: string }>;
  /** Calls `method` on the app's backend; resolves with its result, rejects with an RpcError. */
  rpc<T = unknown>(method: string, data?: unknown): Promise<T>;
  readonly subscriptions: ReadonlyMap<string, Subscription>;
  addEventListener<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): void;
}
