// ticketgate browser (and Node) client: an ES module, no build step.
//
//   import { TicketgateClient } from "/ticketgate.js";
//   const client = new TicketgateClient({ getJwt: () => auth.currentJwt() });
//   client.addEventListener("broadcast", (e) => console.log(e.detail.data));
//   await client.connect();
//
// It fetches a ticket from /token/ws with the JWT, opens /demo?token=…, sends the JWT as the
// first message and resolves once `authenticated` arrives. It refreshes the JWT in-band on
// `token_expiring`, pings to notice dead connections, and reconnects with exponential backoff
// and jitter, always with a fresh ticket, except after 4400, 4401 and 4403, which need the
// application's attention rather than a retry.
//
// Channels:
//
//   const room = client.subscribe("chat:room-1", { getToken: () => api.subscriptionToken(...) });
//   room.addEventListener("publication", (e) => console.log(e.detail.data));
//   const { clients } = await room.presence();
//   room.unsubscribe();
//
// A subscription is made again after every reconnect (with a fresh token from `getToken`,
// when it has one) and refreshed in place on `subscription_expiring`.
//
// History and recovery: in a namespace with `history_size`, each publication carries an
// `offset` and `epoch`. A subscription remembers the last of them and resubscribes with
// `since` after every reconnect, so the publications missed meanwhile arrive first, in
// order, and none twice. When they cannot be recovered (the history was trimmed or
// expired), the subscription fires `resync`: reload the state from the app's backend.
// When the gateway node itself lost its place in MongoDB's stream, it asks the client to
// resubscribe (done at once, with `since`, so recovery fills the gap) and the client fires
// `missed` with the channels without history whose publications (and broadcasts and user
// messages) may be gone.
//
//   room.addEventListener("subscribed", (e) => e.detail.recovered);   // true, false or undefined
//   room.addEventListener("resync", () => reloadRoom());
//   client.addEventListener("missed", (e) => reloadAll(e.detail.channels));
//
// Transports: where WebSockets do not get through (a proxy that refuses upgrades), the client
// falls back to Server-Sent Events with its messages sent by POST (docs/PROTOCOL.md,
// "Transports"): same API, same events, same recovery. `client.transport` says which is in
// use. Once the WebSocket failed in a page, reconnects go straight to SSE for ten minutes.
//
// One connection for all tabs: with `shared: true` the tabs of an origin share one connection
// per gateway and user, held by ticketgate-worker.js (a SharedWorker beside this module), with
// the same API in every tab.

/** The WebSocket subprotocol this client speaks (docs/PROTOCOL.md). */
export const SUBPROTOCOL = "ticketgate.v1";

/** Close codes after which reconnecting cannot help. */
export const FATAL_CLOSE_CODES = Object.freeze([4400, 4401, 4403]);

/** @typedef {"idle"|"connecting"|"authenticating"|"authenticated"|"reconnecting"|"closed"} State */

/** How long, once a WebSocket failed before opening, reconnects go straight to SSE. */
export const SSE_STICKY_MS = 10 * 60 * 1000;

const UTF8 = new TextEncoder();

/** When a WebSocket last failed before opening in this page (shared by its clients). */
let websocketFailedAt = null;

const DEFAULTS = {
  baseUrl: undefined,
  tokenPath: "/token/ws",
  socketPath: "/demo",
  ssePath: "/sse",
  sseMessagesPath: "/sse/messages",
  transports: ["websocket", "sse"],
  websocketTimeoutMs: 5000,
  EventSource: undefined,
  pingIntervalMs: 20000,
  pongTimeoutMs: 10000,
  backoff: { initialMs: 500, maxMs: 30000, factor: 2, jitter: 0.5 },
  WebSocket: undefined,
  fetch: undefined,
};

/** A refusal while fetching the ticket: `status` and the gateway's JSON `error` code. */
export class TicketError extends Error {
  constructor(status, code, message, retryAfterMs = null) {
    super(message || `ticket refused: ${status} ${code}`);
    this.name = "TicketError";
    this.status = status;
    this.code = code;
    /** The wait the gateway asked for with `Retry-After` (429, 503), or null. */
    this.retryAfterMs = retryAfterMs;
  }
}

/** `Retry-After` in whole seconds (the only form the gateway sends), as milliseconds, or null. */
function retryAfterMs(response) {
  const value = response.headers?.get?.("retry-after");
  if (!value || !/^\d+$/.test(value.trim())) return null;
  return Number(value.trim()) * 1000;
}

/** A refused channel request: the gateway's error `code` (docs/PROTOCOL.md, "Channels"). */
export class ChannelError extends Error {
  constructor(code, message, channel) {
    super(message || code);
    this.name = "ChannelError";
    this.code = code;
    this.channel = channel;
  }
}

/**
 * One channel subscription, an EventTarget: `subscribed`, `publication`, `unsubscribed`,
 * `error`, `join`, `leave`, `expiring`, `resync`. Made by `client.subscribe()`, or by the
 * server API.
 */
/**
 * A failed `rpc()`: the backend's error object (`code`, `message` and any fields it added), or
 * the gateway's (`upstream_unavailable`, `upstream_timeout`, `too_many_requests`,
 * `upstream_disabled`, `not_connected`); docs/PROTOCOL.md, "Upstream".
 */
export class RpcError extends Error {
  constructor(error) {
    super(typeof error?.message === "string" ? error.message : String(error?.code));
    this.name = "RpcError";
    this.code = error?.code;
    /** The error object as it came. */
    this.error = error;
  }
}

export class Subscription extends EventTarget {
  constructor(client, channel, options = {}) {
    super();
    this.client = client;
    this.channel = channel;
    this.getToken = options.getToken;
    /** @type {"subscribing"|"subscribed"|"unsubscribed"} */
    this.state = "subscribing";
    /** Made by the server API: the client does not subscribe it again after a reconnect. */
    this.server = Boolean(options.server);
    /** History namespaces: the channel's epoch and the offset of the last publication had. */
    this.epoch = null;
    this.offset = null;
    /** How many times a subscribe refused as `unavailable` has been asked again. */
    this.retryStep = 0;
  }

  /** Where this subscription's copy of the channel ends, for a recovering subscribe. */
  get since() {
    return this.epoch === null ? null : { offset: this.offset, epoch: this.epoch };
  }

  /** A publication from the gateway: false when it is one this subscription already had. */
  _advance(message) {
    if (message.offset === undefined) return true;
    if (message.epoch === this.epoch && message.offset <= this.offset) return false;
    const gap = message.epoch === this.epoch && message.offset > this.offset + 1;
    this.epoch = message.epoch;
    this.offset = message.offset;
    // The gateway delivers every offset in order; a gap means something was lost on the way.
    if (gap) this._emit("resync", { channel: this.channel, reason: "gap", offset: message.offset, epoch: message.epoch });
    return true;
  }

  /** Who is subscribed, on every node (namespaces with presence only). */
  presence() {
    return presenceThrough(this.client, this.channel);
  }

  /** Leaves the channel; no publication arrives afterwards, and no resubscribe follows. */
  unsubscribe() {
    this.client.subscriptions.delete(this.channel);
    const wasLive = this.state !== "unsubscribed";
    this.state = "unsubscribed";
    if (wasLive && this.client.state === "authenticated") {
      return this.client.request({ type: "unsubscribe", channel: this.channel }).catch(() => {});
    }
    return Promise.resolve();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * An SSE stream and its POSTs behind the part of the WebSocket interface the client uses
 * (`readyState`, `send`, `close`, `onopen`, `onmessage`, `onclose`), so the client itself
 * does not care which transport it is on. Messages sent together go in one POST; POSTs go
 * one at a time, in order, each with the next `seq`, and a POST whose answer was lost (or that
 * the gateway asked to have again) is repeated with the same `seq`, which applies it once.
 */
class SseSocket {
  constructor(streamUrl, messagesUrl, EventSourceImpl, fetchImpl) {
    this.readyState = 0;
    this.messagesUrl = messagesUrl;
    this.fetchImpl = fetchImpl;
    this.session = null;
    this.seq = 0;
    this.queue = [];
    this.posting = false;
    this.onopen = this.onmessage = this.onclose = null;
    // EventSource would reconnect by itself with the same URL, whose ticket is spent: every
    // error ends this stream, and the client reconnects with a fresh ticket.
    const source = new EventSourceImpl(streamUrl);
    this.source = source;
    source.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "session" && this.readyState === 0) {
        this.session = message.session;
        this.readyState = 1;
        this.onopen?.();
      } else if (message.type === "close") {
        this.#ended(message.code, message.reason);
      } else {
        this.onmessage?.({ data: event.data });
      }
    };
    source.onerror = () => this.#ended(1006, "");
  }

  send(text) {
    if (this.readyState !== 1) return;
    this.queue.push(text);
    this.#post();
  }

  close(code = 1000, reason = "") {
    if (this.readyState >= 2) return;
    // Like a WebSocket's, the close event comes after close() returns.
    this.readyState = 2;
    setTimeout(() => this.#ended(code, reason), 0);
  }

  async #post() {
    if (this.posting || this.queue.length === 0 || this.readyState !== 1) return;
    this.posting = true;
    const seq = ++this.seq;
    // Up to 100 messages, and no more than 16 KiB together unless one alone is larger: a body
    // the gateway takes before and after authentication alike.
    let count = 0;
    let bytes = 0;
    while (count < this.queue.length && count < 100) {
      const size = UTF8.encode(this.queue[count]).length;
      if (count > 0 && bytes + size > 16384) break;
      bytes += size;
      count += 1;
    }
    const body = `{"session":${JSON.stringify(this.session)},"seq":${seq},"messages":[${this.queue.splice(0, count).join(",")}]}`;
    for (let attempt = 0; this.readyState === 1; attempt += 1) {
      let response = null;
      try {
        response = await this.fetchImpl(this.messagesUrl, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body,
        });
      } catch {
        // Lost on the way, or its answer was: the same seq again is applied once.
      }
      if (response?.status === 204) break;
      const again = response === null || response.status === 429 || response.status === 503;
      if (!again || attempt >= 5) {
        // The session is gone (404) or the messages cannot go: this connection is over.
        this.#ended(1006, `messages refused: ${response?.status ?? "unreachable"}`);
        break;
      }
      const wait = retryAfterMs(response ?? { headers: { get: () => null } }) ?? 250 * 2 ** attempt;
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
    this.posting = false;
    this.#post();
  }

  #ended(code, reason) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.source.close();
    this.onclose?.({ code, reason });
  }
}

export class TicketgateClient extends EventTarget {
  /**
   * @param {object} options
   * @param {() => (string|Promise<string>)} options.getJwt the user's current JWT
   * @param {string} [options.baseUrl] the gateway's http(s) origin; default: the page's
   * @param {number} [options.pingIntervalMs] app-level ping period (default 20 s)
   * @param {number} [options.pongTimeoutMs] how long to wait for any answer to a ping (10 s)
   * @param {{initialMs?: number, maxMs?: number, factor?: number, jitter?: number}} [options.backoff]
   * @param {("websocket"|"sse")[]} [options.transports] in the order to try (default both)
   * @param {number} [options.websocketTimeoutMs] a WebSocket not open by then has failed (5 s)
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation (Node: the `ws` package)
   * @param {typeof EventSource} [options.EventSource] an EventSource implementation
   * @param {typeof fetch} [options.fetch] a fetch implementation
   * @param {boolean} [options.shared] one connection for all tabs, in a SharedWorker
   * @param {string|URL} [options.workerUrl] the worker script (default: ticketgate-worker.js beside this module)
   */
  constructor(options) {
    super();
    if (!options || typeof options.getJwt !== "function") {
      throw new TypeError("TicketgateClient needs a getJwt() callback");
    }
    if (options.shared) {
      // One connection for all of the browser's tabs, where SharedWorker exists and the
      // worker script is on the page's origin; otherwise this tab's own connection.
      const shared = SharedTicketgateClient.tryStart(options);
      if (shared) return shared;
    }
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    this.baseUrl = this.options.baseUrl || globalThis.location?.origin;
    if (!this.baseUrl) throw new TypeError("baseUrl is required outside a browser page");
    this.WebSocketImpl = this.options.WebSocket || globalThis.WebSocket;
    this.EventSourceImpl = this.options.EventSource || globalThis.EventSource;
    this.fetchImpl = this.options.fetch || globalThis.fetch.bind(globalThis);
    /** @type {State} */
    this.state = "idle";
    this.socket = null;
    /** @type {"websocket"|"sse"|null} the transport of the current connection */
    this.transport = null;
    this.attempt = 0;
    /** How many times the backoff has doubled since the last authentication. */
    this.backoffStep = 0;
    this.userId = null;
    this.expiresAt = null;
    this.timers = { ping: null, pong: null, retry: null };
    this.stopped = false;
    this.waiters = [];
    /** @type {Map<string, Subscription>} */
    this.subscriptions = new Map();
    this.nextId = 1;
    /** Requests waiting for their reply, by id. */
    this.pending = new Map();
  }

  /**
   * Subscribes to `channel` (now if connected, else once authenticated) and after every
   * reconnect. `getToken()`, when given, returns a subscription token for the channel.
   * @returns {Subscription}
   */
  subscribe(channel, options = {}) {
    let subscription = this.subscriptions.get(channel);
    if (!subscription) {
      subscription = new Subscription(this, channel, options);
      this.subscriptions.set(channel, subscription);
    }
    if (this.state === "authenticated") this.#sendSubscribe(subscription, false);
    return subscription;
  }

  /**
   * Publishes `data` into `channel` (a namespace with `client_publish`; granted by the JWT's
   * `publish` claim or by the app's backend). Resolves with `{offset, epoch}` (set in a history
   * namespace), rejects with a ChannelError (`permission_denied` with the backend's `detail`).
   */
  publish(channel, data) {
    return publishThrough(this, channel, data);
  }

  /**
   * Calls `method` on the app's backend with `data`; resolves with its `result`, rejects with
   * an RpcError. Calls made together are answered as the backend answers, in any order.
   */
  rpc(method, data = null) {
    return rpcThrough(this, method, data);
  }

  /** Sends `message` with a fresh `id`; resolves with the reply, rejects with a ChannelError. */
  request(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== 1) {
        reject(new ChannelError("not_connected", "the client is not connected", message.channel));
        return;
      }
      this.pending.set(id, { resolve, reject });
      this.#send({ ...message, id });
    });
  }

  async #sendSubscribe(subscription, refresh) {
    const message = { type: "subscribe", channel: subscription.channel };
    const since = refresh ? null : subscription.since;
    if (since) message.since = since;
    try {
      if (subscription.getToken) message.token = await subscription.getToken(subscription.channel);
    } catch (error) {
      subscription._emit("error", { error });
      return;
    }
    if (this.subscriptions.get(subscription.channel) !== subscription) return;
    try {
      const reply = await this.request(message);
      subscription.state = "subscribed";
      subscription.retryStep = 0;
      const recovered = reply.recovered;
      if (reply.epoch !== undefined && !refresh && recovered !== true) {
        // A first subscribe, or what was missed is gone: live from the reply's position on.
        subscription.epoch = reply.epoch;
        subscription.offset = reply.offset;
      }
      subscription._emit("subscribed", {
        channel: subscription.channel,
        refreshed: Boolean(reply.refreshed) || refresh,
        recovered,
        offset: reply.offset,
        epoch: reply.epoch,
      });
      if (recovered === false) {
        subscription._emit("resync", { channel: subscription.channel, reason: "not_recovered", offset: reply.offset, epoch: reply.epoch });
      }
    } catch (error) {
      if (error.code === "not_connected") return; // done again after the reconnect
      if (error.code === "unavailable" && this.subscriptions.get(subscription.channel) === subscription) {
        // MongoDB was busy or away for a moment: the subscription is kept and asked for again.
        this.#retrySubscribe(subscription, refresh, error);
        return;
      }
      subscription.state = "unsubscribed";
      this.subscriptions.delete(subscription.channel);
      subscription._emit("error", { error });
    }
  }

  /** Asks for `subscription` again after the backoff, on this connection only. */
  #retrySubscribe(subscription, refresh, error) {
    const { initialMs, maxMs, factor, jitter } = this.options.backoff;
    const base = Math.min(maxMs, initialMs * factor ** subscription.retryStep);
    const delay = base * (1 - jitter) + Math.random() * base * jitter;
    subscription.retryStep += 1;
    subscription._emit("error", { error, retrying: true, delayMs: Math.round(delay) });
    const socket = this.socket;
    setTimeout(() => {
      // A reconnect subscribes again by itself; an unsubscribe means the app is done with it.
      if (this.socket !== socket || this.state !== "authenticated") return;
      if (this.subscriptions.get(subscription.channel) !== subscription) return;
      this.#sendSubscribe(subscription, refresh);
    }, delay);
  }

  #onChannelMessage(message) {
    let subscription = this.subscriptions.get(message.channel);
    switch (message.type) {
      case "subscribed":
        // Unasked: the server API subscribed this user.
        if (!subscription) {
          subscription = new Subscription(this, message.channel, { server: true });
          this.subscriptions.set(message.channel, subscription);
        }
        subscription.state = "subscribed";
        subscription.server = true;
        if (message.epoch !== undefined) {
          subscription.epoch = message.epoch;
          subscription.offset = message.offset;
        }
        this.#emit("subscription", { subscription });
        subscription._emit("subscribed", { channel: message.channel, server: true, offset: message.offset, epoch: message.epoch });
        break;
      case "unsubscribed":
        if (!subscription) return;
        if (message.reason === "resubscribe") {
          // The node may have missed publications (docs/PROTOCOL.md, "When a node loses its
          // place"): subscribe again from the last offset had, and recovery fills the gap;
          // `subscribed` then says whether it did.
          subscription.state = "subscribing";
          this.#sendSubscribe(subscription, false);
          return;
        }
        this.subscriptions.delete(message.channel);
        subscription.state = "unsubscribed";
        subscription._emit("unsubscribed", { channel: message.channel, reason: message.reason });
        break;
      case "subscription_expiring":
        if (!subscription) return;
        subscription._emit("expiring", { expiresAt: message.expires_at });
        if (subscription.getToken) this.#sendSubscribe(subscription, true);
        break;
      case "publication": {
        if (!subscription || !subscription._advance(message)) return;
        const detail = { channel: message.channel, data: message.data };
        if (message.offset !== undefined) Object.assign(detail, { offset: message.offset, epoch: message.epoch });
        subscription._emit("publication", detail);
        break;
      }
      case "join":
      case "leave":
        subscription?._emit(message.type, { userId: message.user_id, connectionId: message.connection_id });
        break;
    }
  }

  /** Connects (once authenticated, resolves with `{userId, expiresAt}`), and keeps connecting. */
  connect() {
    this.stopped = false;
    // Already authenticated (a second caller, a second tab of a shared connection): at once.
    if (this.state === "authenticated") return Promise.resolve({ userId: this.userId, expiresAt: this.expiresAt });
    const authenticated = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.state === "idle" || this.state === "closed") this.#open();
    return authenticated;
  }

  /** Closes for good: no reconnect. */
  close(code = 1000, reason = "client closed") {
    this.stopped = true;
    this.#clearTimers();
    if (this.socket && this.socket.readyState <= 1) this.socket.close(code, reason);
    this.#setState("closed");
  }

  /** Sends `{"type":"echo","data":…}`; the answer arrives as an `echo` event. */
  echo(data) {
    this.#send({ type: "echo", data });
  }

  /** Sends an app-level `{"type":"ping"}`; the answer arrives as a `pong` event. */
  ping() {
    this.#send({ type: "ping" });
  }

  async #open() {
    this.#clearTimers();
    this.#setState(this.attempt === 0 ? "connecting" : "reconnecting");
    let jwt, ticket;
    try {
      jwt = await this.options.getJwt();
      ticket = await this.#fetchTicket(jwt);
    } catch (error) {
      this.#emit("error", { error });
      // A refused JWT will not get better by retrying; an outage might.
      if (error instanceof TicketError && (error.status === 401 || error.status === 403)) {
        this.#fail(error);
        return;
      }
      // A gateway that says when to come back (busy, draining, rate limit) is taken at its
      // word: waiting longer and longer would only keep a recovered gateway idle.
      this.#scheduleRetry(error instanceof TicketError ? error.retryAfterMs : null);
      return;
    }
    if (this.stopped) return;
    const transport = this.#chooseTransport();
    this.transport = transport;
    const socket = transport === "sse" ? this.#openStream(ticket) : this.#openWebSocket(ticket);
    this.socket = socket;
    // A WebSocket that does not open in time (a proxy that swallows the upgrade) has failed.
    const opening = transport === "websocket" && this.#mayFallBack()
      ? setTimeout(() => this.#websocketFailed(socket), this.options.websocketTimeoutMs)
      : null;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      clearTimeout(opening);
      this.#setState("authenticating");
      socket.send(JSON.stringify({ type: "jwt", token: jwt }));
    };
    socket.onmessage = (event) => this.#onMessage(event.data);
    socket.onclose = (event) => {
      clearTimeout(opening);
      // Refused, reset or blocked before it opened: try SSE now, with a fresh ticket.
      if (!opened && transport === "websocket" && this.#mayFallBack()) {
        this.#websocketFailed(socket);
        return;
      }
      this.#onClose(socket, event.code, event.reason);
    };
    socket.onerror = () => {}; // the close event follows and carries what matters
  }

  /** The transport to try now: the first allowed, but SSE for ten minutes after a failed WebSocket. */
  #chooseTransport() {
    const allowed = this.options.transports;
    const recentlyFailed = websocketFailedAt !== null && Date.now() - websocketFailedAt < SSE_STICKY_MS;
    if (allowed.includes("sse") && (allowed[0] === "sse" || recentlyFailed || !allowed.includes("websocket"))) {
      return "sse";
    }
    return "websocket";
  }

  #mayFallBack() {
    return this.options.transports.includes("sse") && Boolean(this.EventSourceImpl);
  }

  /** The WebSocket failed before it opened: remember it for the page, and open SSE at once. */
  #websocketFailed(socket) {
    if (socket !== this.socket) return;
    websocketFailedAt = Date.now();
    this.socket = null;
    socket.onclose = socket.onopen = socket.onmessage = null;
    try {
      socket.close();
    } catch {
      // not open yet in some implementations
    }
    this.#emit("fallback", { from: "websocket", to: "sse" });
    this.#open();
  }

  #openWebSocket(ticket) {
    const url = new URL(this.options.socketPath, this.baseUrl);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", ticket);
    // Offering the subprotocol has the gateway confirm, in its 101, that it speaks this one.
    return new this.WebSocketImpl(url.toString(), [SUBPROTOCOL]);
  }

  #openStream(ticket) {
    const url = new URL(this.options.ssePath, this.baseUrl);
    url.searchParams.set("token", ticket);
    const messages = new URL(this.options.sseMessagesPath, this.baseUrl).toString();
    return new SseSocket(url.toString(), messages, this.EventSourceImpl, this.fetchImpl);
  }

  async #fetchTicket(jwt) {
    const response = await this.fetchImpl(new URL(this.options.tokenPath, this.baseUrl).toString(), {
      headers: { Authorization: `Bearer ${jwt}` },
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || typeof body.token !== "string") {
      throw new TicketError(response.status, body.error || "unknown", body.message, retryAfterMs(response));
    }
    return body.token;
  }

  #onMessage(raw) {
    let message;
    try {
      message = JSON.parse(typeof raw === "string" ? raw : raw.toString());
    } catch {
      return;
    }
    // Any message proves the connection alive.
    clearTimeout(this.timers.pong);
    this.timers.pong = null;
    if (message.id !== undefined && this.pending.has(message.id)) {
      const { resolve, reject } = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (message.type === "error") reject(Object.assign(new ChannelError(message.error, message.message, message.channel), message.detail === undefined ? {} : { detail: message.detail }));
      else resolve(message);
      return;
    }
    switch (message.type) {
      case "authenticated": {
        const first = this.state !== "authenticated";
        this.userId = message.user_id;
        this.expiresAt = message.expires_at;
        if (first) {
          this.attempt = 0;
          this.backoffStep = 0;
          this.#setState("authenticated");
          this.#startPinging();
          for (const waiter of this.waiters.splice(0)) waiter.resolve({ userId: this.userId, expiresAt: this.expiresAt });
          // A new connection holds nothing yet: every subscription the app asked for is made
          // again (server-made ones are the server's to make again).
          for (const subscription of this.subscriptions.values()) {
            if (subscription.server) this.subscriptions.delete(subscription.channel);
            else this.#sendSubscribe(subscription, false);
          }
        }
        this.#emit("authenticated", { userId: this.userId, expiresAt: this.expiresAt, refreshed: !first });
        break;
      }
      case "token_expiring":
        this.#emit("token_expiring", { expiresAt: message.expires_at });
        this.#refresh();
        break;
      case "broadcast":
        this.#emit("broadcast", { seq: message.seq, node: message.node, data: message.data });
        break;
      case "message":
        this.#emit("message", { data: message.data });
        break;
      case "missed":
        // Broadcasts, user messages and these channels' publications may have been lost.
        this.#emit("missed", { channels: message.channels });
        break;
      case "subscribed":
      case "unsubscribed":
      case "subscription_expiring":
      case "publication":
      case "join":
      case "leave":
        this.#onChannelMessage(message);
        break;
      default:
        this.#emit(message.type, message);
    }
  }

  async #refresh() {
    try {
      const jwt = await this.options.getJwt();
      this.#send({ type: "jwt", token: jwt });
    } catch (error) {
      this.#emit("error", { error });
    }
  }

  #onClose(socket, code, reason) {
    if (socket !== this.socket) return;
    this.socket = null;
    this.#clearTimers();
    for (const { reject } of this.pending.values()) reject(new ChannelError("not_connected", "the connection closed"));
    this.pending.clear();
    for (const subscription of this.subscriptions.values()) subscription.state = "subscribing";
    this.#emit("close", { code, reason });
    if (this.stopped) {
      this.#setState("closed");
      return;
    }
    if (FATAL_CLOSE_CODES.includes(code)) {
      this.#fail(Object.assign(new Error(`closed with ${code}: ${reason}`), { code, reason }));
      return;
    }
    this.#scheduleRetry();
  }

  #fail(error) {
    this.stopped = true;
    this.#setState("closed");
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
  }

  #scheduleRetry(retryAfterMs = null) {
    if (this.stopped) return;
    const { initialMs, maxMs, factor, jitter } = this.options.backoff;
    let delay;
    if (retryAfterMs !== null) {
      // At least what the gateway asked, plus jitter so the clients it refused together do
      // not return together; the backoff does not grow.
      delay = retryAfterMs + Math.random() * retryAfterMs * jitter;
    } else {
      const base = Math.min(maxMs, initialMs * factor ** this.backoffStep);
      // Full jitter on a share of the delay spreads reconnecting clients apart.
      delay = base * (1 - jitter) + Math.random() * base * jitter;
      this.backoffStep += 1;
    }
    this.attempt += 1;
    this.#setState("reconnecting");
    this.#emit("reconnecting", { attempt: this.attempt, delayMs: Math.round(delay), retryAfterMs });
    this.timers.retry = setTimeout(() => this.#open(), delay);
  }

  #startPinging() {
    clearInterval(this.timers.ping);
    this.timers.ping = setInterval(() => {
      if (this.state !== "authenticated") return;
      this.#send({ type: "ping" });
      if (!this.timers.pong) {
        // No answer at all in time: the connection is dead even if the socket does not know.
        // Do not wait for a closing handshake a dead peer will never send.
        this.timers.pong = setTimeout(() => {
          const dead = this.socket;
          if (!dead) return;
          this.#onClose(dead, 4000, "no pong");
          dead.close(4000, "no pong");
        }, this.options.pongTimeoutMs);
      }
    }, this.options.pingIntervalMs);
  }

  #send(message) {
    if (this.socket && this.socket.readyState === 1) this.socket.send(JSON.stringify(message));
  }

  #clearTimers() {
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.pong);
    clearTimeout(this.timers.retry);
    this.timers = { ping: null, pong: null, retry: null };
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.#emit("state", { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

// What a client asks of the gateway, the same whether its connection is its own or shared by
// all tabs: both kinds of client have `request()`.

/** `publish` as a request: `{offset, epoch}`, or a ChannelError. */
async function publishThrough(client, channel, data) {
  const reply = await client.request({ type: "publish", channel, data });
  return { offset: reply.offset, epoch: reply.epoch };
}

/** `rpc` as a request: the backend's result, or an RpcError. */
async function rpcThrough(client, method, data) {
  let reply;
  try {
    reply = await client.request({ type: "rpc", method, data });
  } catch (error) {
    throw new RpcError({ code: error.code, message: error.message });
  }
  if (reply.type === "rpc_error") throw new RpcError(reply.error);
  return reply.result;
}

/** `presence` as a request: `{clients}`. */
function presenceThrough(client, channel) {
  return client.request({ type: "presence", channel }).then((reply) => ({ clients: reply.clients }));
}

/** The JWT's `sub`, unverified: which user a shared connection is for. */
function subjectOf(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4))).sub ?? "?";
  } catch {
    return "?";
  }
}

/** A channel of a shared client: the same events and methods as a Subscription. */
class SharedSubscription extends EventTarget {
  constructor(client, channel, options) {
    super();
    this.client = client;
    this.channel = channel;
    this.getToken = options.getToken;
    this.state = "subscribing";
    this.server = false;
    this.epoch = null;
    this.offset = null;
  }

  get since() {
    return this.epoch === null ? null : { offset: this.offset, epoch: this.epoch };
  }

  presence() {
    return presenceThrough(this.client, this.channel);
  }

  unsubscribe() {
    this.client.subscriptions.delete(this.channel);
    this.state = "unsubscribed";
    this.client.port.postMessage({ op: "unsubscribe", channel: this.channel });
    return Promise.resolve();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * The tab's side of a connection shared by all tabs (`shared: true`): the same API as
 * TicketgateClient, carried out by ticketgate-worker.js, which holds the one connection.
 */
class SharedTicketgateClient extends EventTarget {
  static tryStart(options) {
    if (typeof SharedWorker === "undefined") return null;
    try {
      const url = options.workerUrl || new URL("ticketgate-worker.js", import.meta.url);
      return new SharedTicketgateClient(options, new SharedWorker(url, { type: "module", name: "ticketgate" }));
    } catch {
      return null; // another origin's script, say: this tab connects on its own
    }
  }

  constructor(options, worker) {
    super();
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    this.baseUrl = this.options.baseUrl || globalThis.location?.origin;
    this.shared = true;
    this.state = "idle";
    this.userId = null;
    this.expiresAt = null;
    this.transport = null;
    this.subscriptions = new Map();
    this.nextId = 1;
    this.replies = new Map();
    this.waiters = [];
    this.opened = false;
    this.port = worker.port;
    this.port.onmessage = (event) => this.#onMessage(event.data);
    this.port.start();
    // The worker lets go of a tab it has not heard from for 3 s (closed or crashed).
    this.alive = setInterval(() => this.port.postMessage({ op: "alive" }), 1000);
    globalThis.addEventListener?.("pagehide", () => this.port.postMessage({ op: "leave" }));
  }

  async connect() {
    const authenticated = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.opened) {
      this.opened = true;
      const jwt = await this.options.getJwt();
      const { getJwt, WebSocket, EventSource, fetch, shared, workerUrl, ...rest } = this.options;
      const options = JSON.parse(JSON.stringify({ ...rest, baseUrl: this.baseUrl }));
      this.port.postMessage({ op: "open", key: `${this.baseUrl}|${subjectOf(jwt)}`, options });
      for (const subscription of this.subscriptions.values()) this.#sendSubscribe(subscription);
    }
    return authenticated;
  }

  close() {
    clearInterval(this.alive);
    this.port.postMessage({ op: "leave" });
    this.#setState("closed");
  }

  echo(data) {
    this.port.postMessage({ op: "send", method: "echo", data });
  }

  ping() {
    this.port.postMessage({ op: "send", method: "ping" });
  }

  subscribe(channel, options = {}) {
    let subscription = this.subscriptions.get(channel);
    if (!subscription) {
      subscription = new SharedSubscription(this, channel, options);
      this.subscriptions.set(channel, subscription);
      if (this.opened) this.#sendSubscribe(subscription);
    }
    return subscription;
  }

  #sendSubscribe(subscription) {
    this.port.postMessage({ op: "subscribe", channel: subscription.channel, withToken: Boolean(subscription.getToken) });
  }

  publish(channel, data) {
    return publishThrough(this, channel, data);
  }

  rpc(method, data = null) {
    return rpcThrough(this, method, data);
  }

  request(message) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.replies.set(id, { resolve, reject });
      this.port.postMessage({ op: "request", id, message });
    });
  }

  async #answer(message) {
    try {
      const value = message.what === "jwt"
        ? await this.options.getJwt()
        : await this.subscriptions.get(message.channel)?.getToken?.(message.channel);
      this.port.postMessage({ op: "answer", id: message.id, value });
    } catch (error) {
      this.port.postMessage({ op: "answer", id: message.id, error: String(error?.message || error) });
    }
  }

  #onMessage(message) {
    switch (message.kind) {
      case "ask":
        this.#answer(message);
        break;
      case "connected":
        this.transport = message.transport;
        this.userId = message.session.userId;
        this.expiresAt = message.session.expiresAt;
        this.#setState(message.state);
        for (const waiter of this.waiters.splice(0)) waiter.resolve(message.session);
        break;
      case "failed":
        this.#setState("closed");
        for (const waiter of this.waiters.splice(0)) waiter.reject(Object.assign(new Error(message.error?.message), message.error));
        break;
      case "event":
        this.transport = message.transport;
        if (message.type === "authenticated") {
          this.userId = message.detail.userId;
          this.expiresAt = message.detail.expiresAt;
        }
        if (message.type === "state") this.#setState(message.detail.state);
        else this.dispatchEvent(new CustomEvent(message.type, { detail: message.detail }));
        break;
      case "channel": {
        const subscription = this.subscriptions.get(message.channel);
        if (!subscription) return;
        subscription.offset = message.offset;
        subscription.epoch = message.epoch;
        if (message.type === "subscribed") subscription.state = "subscribed";
        if (message.type === "unsubscribed" || (message.type === "error" && !message.detail?.retrying)) {
          subscription.state = "unsubscribed";
          this.subscriptions.delete(message.channel);
        }
        subscription._emit(message.type, message.detail);
        break;
      }
      case "reply": {
        const waiting = this.replies.get(message.id);
        if (!waiting) return;
        this.replies.delete(message.id);
        if (message.ok) waiting.resolve(message.value);
        else waiting.reject(Object.assign(new ChannelError(message.error.code, message.error.message, message.error.channel), message.error.detail === undefined ? {} : { detail: message.error.detail }));
        break;
      }
    }
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state } }));
  }
}
