// ticketgate's SharedWorker: one gateway connection per gateway and user for all of a
// browser's tabs on an origin (the client's `shared: true`). Tabs talk to it through their
// MessagePort; it holds one TicketgateClient per (gateway, user), subscribes each channel
// once however many tabs want it, sends each tab only the events of the channels it
// subscribed and only the answers to its own requests, and asks a live tab for every JWT and
// subscription token. A tab that stops saying it is alive for 3 s is taken for gone (its
// channels released); when a connection's last tab is gone, the connection closes.
//
// Served by the gateway at /ticketgate-worker.js, next to /ticketgate.js. A page on another
// origin than the gateway serves both files from its own origin (a browser starts a
// SharedWorker only from the page's origin).
import { TicketgateClient } from "./ticketgate.js";

const TAB_SILENCE_MS = 3000;
const CLIENT_EVENTS = ["state", "authenticated", "token_expiring", "broadcast", "message", "close", "reconnecting", "fallback", "subscription", "missed"];
const CHANNEL_EVENTS = ["subscribed", "publication", "unsubscribed", "error", "join", "leave", "expiring", "resync"];

/** @type {Map<string, Shared>} */
const connections = new Map();
let nextAsk = 1;

/** What can cross a MessagePort of an event's detail. */
function cloneable(detail) {
  if (!detail || typeof detail !== "object") return detail;
  const copy = {};
  for (const [key, value] of Object.entries(detail)) {
    if (value instanceof Error) copy[key] = { name: value.name, message: value.message, code: value.code, status: value.status };
    else if (value && typeof value === "object" && typeof value.addEventListener === "function") continue;
    else copy[key] = value;
  }
  return copy;
}

class Tab {
  constructor(port) {
    this.port = port;
    this.lastSeen = Date.now();
    /** @type {Shared|null} */
    this.shared = null;
    this.channels = new Set();
    this.asks = new Map();
  }

  post(message) {
    try {
      this.port.postMessage(message);
    } catch {
      // the tab is gone; the sweep releases it
    }
  }

  /** Asks this tab for a JWT (or a channel's token): resolves with its answer. */
  ask(what, channel) {
    const id = nextAsk++;
    return new Promise((resolve, reject) => {
      this.asks.set(id, { resolve, reject });
      this.post({ kind: "ask", id, what, channel });
      setTimeout(() => {
        if (this.asks.delete(id)) reject(new Error(`no ${what} from the tab in time`));
      }, 10000);
    });
  }
}

class Shared {
  constructor(key, options) {
    this.key = key;
    /** @type {Set<Tab>} */
    this.tabs = new Set();
    /** Which tabs subscribed each channel, and the one subscription at the gateway. */
    this.channelTabs = new Map();
    this.subscriptions = new Map();
    this.client = new TicketgateClient({
      ...options,
      getJwt: () => this.liveTab().ask("jwt"),
    });
    for (const type of CLIENT_EVENTS) {
      this.client.addEventListener(type, (event) => {
        const detail = type === "subscription" ? { channel: event.detail.subscription.channel } : cloneable(event.detail);
        for (const tab of this.tabs) tab.post({ kind: "event", type, detail, state: this.client.state, transport: this.client.transport });
      });
    }
  }

  /** The tab most recently heard from: asked for JWTs. */
  liveTab() {
    let live = null;
    for (const tab of this.tabs) if (!live || tab.lastSeen > live.lastSeen) live = tab;
    if (!live) throw new Error("no tab left");
    return live;
  }

  subscribe(tab, channel, withToken) {
    tab.channels.add(channel);
    let tabs = this.channelTabs.get(channel);
    if (!tabs) {
      tabs = new Set();
      this.channelTabs.set(channel, tabs);
    }
    tabs.add(tab);
    let subscription = this.subscriptions.get(channel);
    if (!subscription) {
      const options = withToken ? { getToken: (ch) => [...(this.channelTabs.get(ch) || [tab])].at(-1).ask("token", ch) } : {};
      subscription = this.client.subscribe(channel, options);
      this.subscriptions.set(channel, subscription);
      for (const type of CHANNEL_EVENTS) {
        subscription.addEventListener(type, (event) => {
          for (const listener of this.channelTabs.get(channel) || []) {
            listener.post({ kind: "channel", channel, type, detail: cloneable(event.detail), offset: subscription.offset, epoch: subscription.epoch });
          }
          if (type === "unsubscribed" || (type === "error" && !event.detail.retrying)) this.forget(channel);
        });
      }
    } else if (subscription.state === "subscribed") {
      // Already subscribed for another tab: this one is told so at once.
      tab.post({ kind: "channel", channel, type: "subscribed", detail: { channel, offset: subscription.offset, epoch: subscription.epoch }, offset: subscription.offset, epoch: subscription.epoch });
    }
  }

  unsubscribe(tab, channel) {
    tab.channels.delete(channel);
    const tabs = this.channelTabs.get(channel);
    if (!tabs) return;
    tabs.delete(tab);
    if (tabs.size === 0) {
      this.subscriptions.get(channel)?.unsubscribe();
      this.forget(channel);
    }
  }

  forget(channel) {
    this.subscriptions.delete(channel);
    this.channelTabs.delete(channel);
  }

  /** A tab left (or went silent): its channels are released; the last tab closes the connection. */
  drop(tab) {
    if (!this.tabs.delete(tab)) return;
    for (const channel of [...tab.channels]) this.unsubscribe(tab, channel);
    for (const { reject } of tab.asks.values()) reject(new Error("the tab left"));
    if (this.tabs.size === 0) {
      this.client.close(1000, "last tab closed");
      connections.delete(this.key);
    }
  }
}

async function onMessage(tab, message) {
  tab.lastSeen = Date.now();
  switch (message.op) {
    case "open": {
      let shared = connections.get(message.key);
      if (!shared) {
        shared = new Shared(message.key, message.options);
        connections.set(message.key, shared);
      }
      tab.shared = shared;
      shared.tabs.add(tab);
      try {
        const session = await shared.client.connect();
        tab.post({ kind: "connected", session, state: shared.client.state, transport: shared.client.transport });
      } catch (error) {
        tab.post({ kind: "failed", error: cloneable({ error }).error });
      }
      break;
    }
    case "answer": {
      const ask = tab.asks.get(message.id);
      if (!ask) return;
      tab.asks.delete(message.id);
      if (message.error) ask.reject(new Error(message.error));
      else ask.resolve(message.value);
      break;
    }
    case "subscribe":
      tab.shared?.subscribe(tab, message.channel, message.withToken);
      break;
    case "unsubscribe":
      tab.shared?.unsubscribe(tab, message.channel);
      break;
    case "request": {
      const client = tab.shared?.client;
      try {
        if (!client) throw Object.assign(new Error("not connected"), { code: "not_connected" });
        const reply = await client.request(message.message);
        tab.post({ kind: "reply", id: message.id, ok: true, value: reply });
      } catch (error) {
        tab.post({ kind: "reply", id: message.id, ok: false, error: { code: error.code, message: error.message, channel: error.channel, detail: error.detail } });
      }
      break;
    }
    case "send":
      tab.shared?.client[message.method]?.(message.data);
      break;
    case "leave":
      tab.shared?.drop(tab);
      break;
    // "alive": the heartbeat; lastSeen is set above.
  }
}

// Tabs that stopped saying they are alive (closed or crashed without a word) are let go.
setInterval(() => {
  const now = Date.now();
  for (const shared of [...connections.values()]) {
    for (const tab of [...shared.tabs]) if (now - tab.lastSeen > TAB_SILENCE_MS) shared.drop(tab);
  }
}, 500);

globalThis.onconnect = (event) => {
  const port = event.ports[0];
  const tab = new Tab(port);
  port.onmessage = (e) => onMessage(tab, e.data);
  port.start();
};
