// The JavaScript client's channels against real gateway processes: subscriptions with claim
// grants and subscription tokens, presence, unsubscribe, server-made subscriptions, and every
// subscription made again after a reconnect and refreshed before its token runs out, and
// made again with `since` when the node lost its place in MongoDB's stream.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MongoClient } from "mongodb";
import WebSocket from "ws";

import { TicketgateClient, ChannelError } from "../ticketgate.js";
import { Gateway, mintJwt, nextEvent, sleep } from "./gateway.mjs";

const gateways = [];
after(async () => Promise.all(gateways.map((g) => g.stop())));

const NAMESPACES = `
[[channels.namespaces]]
name = "chat"
presence = true
join_leave = true
[[channels.namespaces]]
name = "news"
public = true
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
[[channels.namespaces]]
name = "brief"
public = true
history_size = 3
history_ttl_secs = 600
[[channels.namespaces]]
name = "price"
public = true
history_size = 1
history_ttl_secs = 600
deliver_latest = true
`;

async function gateway(env = {}) {
  const dir = mkdtempSync(join(tmpdir(), "ticketgate-client-"));
  const file = join(dir, "ticketgate.toml");
  writeFileSync(file, NAMESPACES);
  const started = await Gateway.start({ CONFIG_FILE: file, ...env });
  gateways.push(started);
  return started;
}

/** A second node beside `gw`, on the same database. */
async function secondNode(gw) {
  const started = await Gateway.beside(gw);
  gateways.push(started);
  return started;
}

/** Collects a subscription's publications as [offset, data]. */
function collect(subscription) {
  const got = [];
  subscription.addEventListener("publication", (e) => got.push([e.detail.offset, e.detail.data]));
  return got;
}

async function until(what, condition, ms = 20000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

function clientFor(gw, user, channels = []) {
  return new TicketgateClient({
    baseUrl: gw.baseUrl,
    WebSocket,
    getJwt: () => mintJwt(user, 3600, { channels }),
    backoff: { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 },
  });
}

const publish = (gw, channel, data) => gw.api("POST", `/api/channels/${encodeURIComponent(channel)}/publish`, { data });

test("subscribes with the JWT's grant, receives, lists presence, unsubscribes", async () => {
  const gw = await gateway();
  const alice = clientFor(gw, "alice", ["chat:*"]);
  const bob = clientFor(gw, "bob", ["chat:room-1"]);
  await alice.connect();
  await bob.connect();
  const room = alice.subscribe("chat:room-1");
  await nextEvent(room, "subscribed");
  const bobsRoom = bob.subscribe("chat:room-1");
  const joined = nextEvent(room, "join", (d) => d.userId === "bob");
  await nextEvent(bobsRoom, "subscribed");
  await joined;

  const got = nextEvent(room, "publication");
  await publish(gw, "chat:room-1", { text: "hi" });
  assert.deepEqual(await got, { channel: "chat:room-1", data: { text: "hi" } });

  const { clients } = await room.presence();
  assert.deepEqual(clients.map((c) => c.user_id), ["alice", "bob"]);

  const left = nextEvent(room, "leave", (d) => d.userId === "bob");
  await bobsRoom.unsubscribe();
  await left;
  assert.equal(bobsRoom.state, "unsubscribed");

  // A refused subscription reports the gateway's code.
  const denied = bob.subscribe("chat:room-2");
  const { error } = await nextEvent(denied, "error");
  assert.ok(error instanceof ChannelError);
  assert.equal(error.code, "permission_denied");
  alice.close();
  bob.close();
});

test("a subscription is made again after a reconnect, with a fresh token", async () => {
  const gw = await gateway();
  const client = clientFor(gw, "carol");
  let tokens = 0;
  const news = client.subscribe("news:today");
  const secret = client.subscribe("chat:secret", {
    getToken: (channel) => {
      tokens += 1;
      return mintJwt("carol", 600, { channel, jti: `carol-${tokens}` });
    },
  });
  await client.connect();
  await Promise.all([nextEvent(news, "subscribed"), nextEvent(secret, "subscribed")]);
  assert.equal(tokens, 1);

  await gw.restart();
  await nextEvent(client, "authenticated", () => true, 20000);
  await Promise.all([nextEvent(news, "subscribed"), nextEvent(secret, "subscribed")]);
  assert.equal(tokens, 2, "a fresh token for the new connection");
  const got = nextEvent(secret, "publication");
  await publish(gw, "chat:secret", 42);
  assert.deepEqual(await got, { channel: "chat:secret", data: 42 });
  client.close();
});

test("a token about to expire is refreshed in place", async () => {
  const gw = await gateway({ TOKEN_REFRESH_NOTICE_SECS: "30" });
  const client = clientFor(gw, "dave");
  let tokens = 0;
  const channel = "chat:short";
  const sub = client.subscribe(channel, {
    getToken: () => {
      tokens += 1;
      // The first token is inside the notice window at once; the next one is not.
      return mintJwt("dave", tokens === 1 ? 10 : 600, { channel });
    },
  });
  const refreshed = nextEvent(sub, "subscribed", (d) => d.refreshed);
  await client.connect();
  await nextEvent(sub, "expiring");
  await refreshed;
  assert.equal(tokens, 2);
  assert.equal(sub.state, "subscribed");
  client.close();
});

test("server-made subscriptions arrive as subscription events", async () => {
  const gw = await gateway();
  const client = clientFor(gw, "erin");
  await client.connect();
  const made = nextEvent(client, "subscription");
  const { status } = await gw.api("POST", "/api/users/erin/subscriptions", { channel: "ops" });
  assert.equal(status, 202);
  const { subscription } = await made;
  assert.equal(subscription.channel, "ops");
  assert.equal(subscription.server, true);
  const ended = nextEvent(subscription, "unsubscribed");
  await gw.api("DELETE", "/api/users/erin/subscriptions/ops");
  assert.deepEqual(await ended, { channel: "ops", reason: "server" });
  client.close();
});

test("publications missed while the gateway was down arrive after the reconnect, in order, none twice", async () => {
  const gw = await gateway();
  const other = await secondNode(gw);
  const client = clientFor(gw, "erin");
  const feed = client.subscribe("feed:live");
  const got = collect(feed);
  const resyncs = [];
  feed.addEventListener("resync", (e) => resyncs.push(e.detail));
  await client.connect();
  const first = await nextEvent(feed, "subscribed");
  assert.equal(first.offset, 0);
  assert.equal(first.recovered, undefined);
  for (let n = 1; n <= 3; n++) await publish(other, "feed:live", n);
  await until("3 publications", () => got.length === 3);

  await gw.stop();
  for (let n = 4; n <= 8; n++) assert.equal((await publish(other, "feed:live", n)).status, 202);
  const resubscribed = nextEvent(feed, "subscribed", () => true, 30000);
  await gw.launch();
  const reply = await resubscribed;
  assert.equal(reply.recovered, true);
  assert.equal(reply.offset, 8);
  await publish(other, "feed:live", 9);
  await until("9 publications", () => got.length === 9);
  await sleep(200);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => [n, n]));
  assert.deepEqual(feed.since, { offset: 9, epoch: first.epoch });
  assert.deepEqual(resyncs, []);
  client.close();
});

test("publications that cannot be recovered fire resync, then live ones flow", async () => {
  const gw = await gateway();
  const other = await secondNode(gw);
  const client = clientFor(gw, "frank");
  const brief = client.subscribe("brief:short");
  const got = collect(brief);
  await client.connect();
  await nextEvent(brief, "subscribed");
  await publish(other, "brief:short", 1);
  await until("1 publication", () => got.length === 1);

  await gw.stop();
  // history_size 3: 2 and 3 are trimmed by the time the client is back.
  for (let n = 2; n <= 6; n++) await publish(other, "brief:short", n);
  const resync = nextEvent(brief, "resync", () => true, 30000);
  await gw.launch();
  assert.deepEqual(await resync, { channel: "brief:short", reason: "not_recovered", offset: 6, epoch: brief.epoch });
  await publish(other, "brief:short", 7);
  await until("the live publication", () => got.length === 2);
  assert.deepEqual(got, [[1, 1], [7, 7]]);
  client.close();
});

test("a deliver_latest channel's latest arrives first as an ordinary publication, and again when a gap cannot be recovered", async () => {
  const gw = await gateway();
  const other = await secondNode(gw);
  for (let n = 1; n <= 2; n++) await publish(other, "price:eur", n);
  const client = clientFor(gw, "jack");
  const price = client.subscribe("price:eur");
  const got = collect(price);
  await client.connect();
  await until("the latest", () => got.length === 1);
  assert.deepEqual(got, [[2, 2]]);

  await gw.stop();
  // history_size 1: 3 to 5 are trimmed by the time the client is back.
  for (let n = 3; n <= 6; n++) await publish(other, "price:eur", n);
  const resync = nextEvent(price, "resync", () => true, 30000);
  await gw.launch();
  await resync;
  await until("the latest again", () => got.length === 2);
  await sleep(200);
  assert.deepEqual(got, [[2, 2], [6, 6]]);
  client.close();
});

/** A TCP relay to the suite's mongod that can be cut (every connection dropped, new ones refused) and mended. */
async function mongodRelay() {
  const first = process.env.MONGODB_URI.replace(/^mongodb(\+srv)?:\/\//, "").split(/[/?]/)[0].split(",")[0];
  const target = new URL(`tcp://${first.includes("@") ? first.split("@")[1] : first}`);
  const sockets = new Set();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) return client.destroy();
    const upstream = net.connect(Number(target.port || 27017), target.hostname);
    for (const [a, b] of [[client, upstream], [upstream, client]]) {
      sockets.add(a);
      a.pipe(b);
      a.on("error", () => b.destroy());
      a.on("close", () => { sockets.delete(a); b.destroy(); });
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    uri: `mongodb://127.0.0.1:${server.address().port}/?directConnection=true`,
    cut() {
      cut = true;
      for (const socket of sockets) socket.destroy();
    },
    mend() {
      cut = false;
    },
    close: () => new Promise((resolve) => { cut = true; for (const s of sockets) s.destroy(); server.close(resolve); }),
  };
}

test("a subscribe refused as unavailable is asked for again until MongoDB answers", async () => {
  const relay = await mongodRelay();
  let client;
  try {
    const gw = await gateway({ MONGODB_URI: relay.uri, STORE_TIMEOUT_MS: "500" });
    client = clientFor(gw, "grace", ["chat:*"]);
    await client.connect();
    relay.cut();
    // A presence namespace: the subscribe must be recorded in MongoDB, which is away.
    const room = client.subscribe("chat:lobby");
    const refused = await nextEvent(room, "error", () => true, 10000);
    assert.equal(refused.error.code, "unavailable");
    assert.equal(refused.retrying, true);
    assert.equal(room.state, "subscribing");
    assert.equal(client.subscriptions.get("chat:lobby"), room);
    const subscribed = nextEvent(room, "subscribed", () => true, 20000);
    relay.mend();
    await subscribed;
    assert.equal(room.state, "subscribed");
    const got = collect(room);
    await publish(gw, "chat:lobby", "after");
    await until("the publication", () => got.length === 1);
    assert.deepEqual((await room.presence()).clients.map((c) => c.user_id), ["grace"]);
  } finally {
    // Closed whatever happened: a client left reconnecting would keep the file's process
    // alive after its tests.
    client?.close();
    await relay.close();
  }
});

test("publish() sends into a channel the JWT's publish claim grants", async () => {
  const gw = await gateway();
  const listener = clientFor(gw, "henry");
  const room = listener.subscribe("talk:room");
  const got = collect(room);
  await listener.connect();
  await nextEvent(room, "subscribed");
  const talker = new TicketgateClient({
    baseUrl: gw.baseUrl,
    WebSocket,
    getJwt: () => mintJwt("ida", 3600, { publish: ["talk:*"] }),
  });
  await talker.connect();
  const sent = await talker.publish("talk:room", { text: "hello" });
  assert.equal(sent.offset, 1);
  assert.equal(typeof sent.epoch, "string");
  await until("the publication", () => got.length === 1);
  assert.deepEqual(got, [[1, { text: "hello" }]]);
  // The listener's JWT has no publish claim.
  await assert.rejects(listener.publish("talk:room", 1), (error) => error instanceof ChannelError && error.code === "permission_denied");
  talker.close();
  listener.close();
});

/**
 * Makes mongod hold the next change-stream read of the gateway named `appName` for `blockMs`,
 * then answer ChangeStreamHistoryLost (286), as when the stream's point fell off the oplog
 * (docs/PROTOCOL.md, "When a node loses its place"). The suite's mongod has test commands.
 */
async function loseStreamPlace(appName, blockMs) {
  const mongo = new MongoClient(process.env.MONGODB_URI);
  try {
    await mongo.db("admin").command({
      configureFailPoint: "failCommand",
      mode: { times: 1 },
      data: { failCommands: ["getMore"], errorCode: 286, blockConnection: true, blockTimeMS: blockMs, appName },
    });
  } finally {
    await mongo.close();
  }
}

test("a node that lost its place has history subscriptions made again with since, and says what was missed", async () => {
  const appName = `tg-js-${Math.random().toString(16).slice(2, 10)}`;
  const uri = process.env.MONGODB_URI;
  const gw = await gateway({ MONGODB_URI: `${uri}${uri.includes("?") ? "&" : "/?"}appName=${appName}` });
  // The other node under its own name, so the fail point holds only this one's stream.
  const other = await Gateway.beside(gw, { MONGODB_URI: uri });
  gateways.push(other);
  const client = clientFor(gw, "frank");
  try {
    await lostPlaceScenario(client, gw, other, appName);
  } finally {
    client.close();
  }
});

async function lostPlaceScenario(client, gw, other, appName) {
  const feed = client.subscribe("feed:lost");
  const news = client.subscribe("news:lost");
  const got = collect(feed);
  const resyncs = [];
  feed.addEventListener("resync", (e) => resyncs.push(e.detail));
  const unsubscribed = [];
  feed.addEventListener("unsubscribed", (e) => unsubscribed.push(e.detail));
  await client.connect();
  await nextEvent(feed, "subscribed");
  await until("news subscribed", () => news.state === "subscribed");
  await publish(other, "feed:lost", 1);
  await until("the first publication", () => got.length === 1);

  // The node's stream is held, then loses its place: what is published meanwhile reaches it
  // only through the resubscribe's recovery.
  const missed = nextEvent(client, "missed", () => true, 30000);
  const resubscribed = nextEvent(feed, "subscribed", () => true, 30000);
  await loseStreamPlace(appName, 2000);
  await sleep(700);
  for (let n = 2; n <= 3; n++) assert.equal((await publish(other, "feed:lost", n)).status, 202);
  assert.deepEqual((await missed).channels, ["news:lost"]);
  assert.equal((await resubscribed).recovered, true);
  await publish(other, "feed:lost", 4);
  await until("4 publications", () => got.length === 4);
  await sleep(200);
  assert.deepEqual(got, [1, 2, 3, 4].map((n) => [n, n]));
  assert.deepEqual(resyncs, []);
  assert.deepEqual(unsubscribed, [], "the app sees no unsubscribe");
  assert.equal(feed.state, "subscribed");
  assert.equal(client.subscriptions.get("feed:lost"), feed);
}
