// The JavaScript client over Server-Sent Events, against real gateway processes: the fallback
// when the WebSocket is refused, the same API and events on SSE, recovery across a restart,
// and reconnects that go straight to SSE once the WebSocket failed in this page.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { EventSource } from "eventsource";

import { TicketgateClient } from "../ticketgate.js";
import { Gateway, mintJwt, nextEvent, sleep } from "./gateway.mjs";

const gateways = [];
const clients = [];
after(async () => {
  // A client left open by a failed test would keep reconnecting, and the process alive.
  for (const client of clients) client.close();
  await Promise.all(gateways.map((g) => g.stop()));
});

const NAMESPACES = `
[[channels.namespaces]]
name = "feed"
public = true
history_size = 100
history_ttl_secs = 600
[[channels.namespaces]]
name = "talk"
public = true
client_publish = true
history_size = 50
history_ttl_secs = 600
`;

async function gateway(env = {}) {
  const dir = mkdtempSync(join(tmpdir(), "ticketgate-sse-"));
  const file = join(dir, "ticketgate.toml");
  writeFileSync(file, NAMESPACES);
  const started = await Gateway.start({ CONFIG_FILE: file, ...env });
  gateways.push(started);
  return started;
}

/** Counts the WebSockets a client constructs. */
class CountingWebSocket extends WebSocket {
  static made = 0;
  constructor(...args) {
    super(...args);
    CountingWebSocket.made += 1;
  }
}

function clientFor(gw, user, options = {}) {
  const client = new TicketgateClient({
    baseUrl: gw.baseUrl,
    WebSocket: CountingWebSocket,
    EventSource,
    getJwt: () => mintJwt(user, 3600, { publish: ["talk:*"] }),
    backoff: { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 },
    ...options,
  });
  clients.push(client);
  return client;
}

async function until(what, condition, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const publish = (gw, channel, data) => gw.api("POST", `/api/channels/${encodeURIComponent(channel)}/publish`, { data });

test("a refused WebSocket falls back to SSE, which carries the whole API and recovers across a restart", async () => {
  const gw = await gateway();
  const other = await Gateway.beside(gw);
  gateways.push(other);
  // A path where every upgrade is refused, as a proxy that blocks WebSockets would.
  const client = clientFor(gw, "alice", { socketPath: "/no-websockets-here" });
  const fallback = nextEvent(client, "fallback");
  const session = await client.connect();
  assert.deepEqual(await fallback, { from: "websocket", to: "sse" });
  assert.equal(session.userId, "alice");
  assert.equal(client.transport, "sse");

  const broadcast = nextEvent(client, "broadcast");
  await gw.api("POST", "/api/broadcast", { data: { over: "sse" } });
  assert.deepEqual((await broadcast).data, { over: "sse" });
  const echo = nextEvent(client, "echo");
  client.echo({ a: [1, 2] });
  assert.deepEqual((await echo).data, { a: [1, 2] });
  // Requests with replies, several at once: one POST or several, in order.
  const [one, two] = await Promise.all([client.publish("talk:1", { n: 1 }), client.publish("talk:1", { n: 2 })]);
  assert.deepEqual([one.offset, two.offset], [1, 2]);

  const feed = client.subscribe("feed:live");
  const got = [];
  feed.addEventListener("publication", (e) => got.push([e.detail.offset, e.detail.data]));
  await nextEvent(feed, "subscribed");
  for (let n = 1; n <= 2; n++) await publish(other, "feed:live", n);
  await until("2 publications", () => got.length === 2);

  // Its gateway restarts; the client comes back on SSE and recovers what it missed.
  const made = CountingWebSocket.made;
  await gw.stop();
  for (let n = 3; n <= 5; n++) assert.equal((await publish(other, "feed:live", n)).status, 202);
  const resubscribed = nextEvent(feed, "subscribed", () => true, 30000);
  await gw.launch();
  assert.equal((await resubscribed).recovered, true);
  await until("5 publications", () => got.length === 5);
  assert.deepEqual(got, [1, 2, 3, 4, 5].map((n) => [n, n]));
  assert.equal(client.transport, "sse");
  assert.equal(CountingWebSocket.made, made, "reconnects go straight to SSE after a failed WebSocket");
  client.close();
  assert.equal(client.state, "closed");
});

test("another client in the same page goes straight to SSE after a WebSocket failed", async () => {
  const gw = await gateway();
  const made = CountingWebSocket.made;
  const client = clientFor(gw, "bob");
  await client.connect();
  assert.equal(client.transport, "sse");
  assert.equal(CountingWebSocket.made, made);
  const pong = nextEvent(client, "pong");
  client.ping();
  await pong;
  client.close();
});

test("a WebSocket-only client does not fall back", async () => {
  const gw = await gateway();
  const client = clientFor(gw, "carol", { transports: ["websocket"] });
  await client.connect();
  assert.equal(client.transport, "websocket");
  client.close();
});

test("the server's close reaches an SSE client as it would a WebSocket client", async () => {
  const gw = await gateway();
  const client = clientFor(gw, "dave", { transports: ["sse"] });
  await client.connect();
  const closed = nextEvent(client, "close");
  await gw.api("POST", "/api/users/dave/disconnect");
  assert.deepEqual(await closed, { code: 4403, reason: "disconnected by the server" });
  await until("closed for good", () => client.state === "closed");
});
