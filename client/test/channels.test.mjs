// The JavaScript client's channels against real gateway processes: subscriptions with claim
// grants and subscription tokens, presence, unsubscribe, server-made subscriptions, and every
// subscription made again after a reconnect and refreshed before its token runs out.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";

import { TicketgateClient, ChannelError } from "../ticketgate.js";
import { Gateway, mintJwt, nextEvent } from "./gateway.mjs";

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
`;

async function gateway(env = {}) {
  const dir = mkdtempSync(join(tmpdir(), "ticketgate-client-"));
  const file = join(dir, "ticketgate.toml");
  writeFileSync(file, NAMESPACES);
  const started = await Gateway.start({ CONFIG_FILE: file, ...env });
  gateways.push(started);
  return started;
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
