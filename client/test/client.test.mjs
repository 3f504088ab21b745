// The JavaScript client against real gateway processes: Node's test runner, the `ws` package
// as the socket.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import net from "node:net";
import WebSocket from "ws";

import http from "node:http";

import { TicketgateClient, TicketError, RpcError, FATAL_CLOSE_CODES } from "../ticketgate.js";
import { Gateway, mintJwt, nextEvent, sleep } from "./gateway.mjs";

const gateways = [];
after(async () => Promise.all(gateways.map((g) => g.stop())));

async function gateway(env) {
  const started = await Gateway.start(env);
  gateways.push(started);
  return started;
}

/** A client whose fetches are recorded, so tests can see each ticket request. */
function clientFor(gw, options = {}) {
  const tickets = [];
  const recordingFetch = async (url, init) => {
    const response = await fetch(url, init);
    const copy = response.clone();
    copy.json().then((body) => body.token && tickets.push(body.token)).catch(() => {});
    return response;
  };
  const client = new TicketgateClient({
    baseUrl: gw.baseUrl,
    WebSocket,
    fetch: recordingFetch,
    getJwt: () => mintJwt("alice"),
    backoff: { initialMs: 100, maxMs: 1000, factor: 2, jitter: 0.5 },
    ...options,
  });
  client.tickets = tickets;
  return client;
}

test("connects, authenticates and receives broadcasts and user messages", async () => {
  const gw = await gateway();
  const client = clientFor(gw);
  const states = [];
  client.addEventListener("state", (e) => states.push(e.detail.state));
  const session = await client.connect();
  assert.equal(session.userId, "alice");
  assert.ok(session.expiresAt > Date.now() / 1000);
  assert.deepEqual(states, ["connecting", "authenticating", "authenticated"]);
  // The client offered ticketgate.v1 and the gateway confirmed it in the 101.
  assert.equal(client.socket.protocol, "ticketgate.v1");

  const broadcast = nextEvent(client, "broadcast");
  const { body } = await gw.api("POST", "/api/broadcast", { data: { hello: "all" } });
  assert.deepEqual(await broadcast, { seq: body.seq, node: body.node, data: { hello: "all" } });
  const message = nextEvent(client, "message");
  await gw.api("POST", "/api/users/alice/messages", { data: "just you" });
  assert.deepEqual(await message, { data: "just you" });
  const echo = nextEvent(client, "echo");
  client.echo([1, 2]);
  assert.deepEqual((await echo).data, [1, 2]);
  client.close();
  assert.equal(client.state, "closed");
});

test("refreshes the JWT in-band when token_expiring arrives", async () => {
  const gw = await gateway({ TOKEN_REFRESH_NOTICE_SECS: "2" });
  let calls = 0;
  const client = clientFor(gw, { getJwt: () => mintJwt("alice", ++calls === 1 ? 3 : 600) });
  const first = await client.connect();
  const refreshed = await nextEvent(client, "authenticated", (d) => d.refreshed);
  assert.ok(refreshed.expiresAt > first.expiresAt + 500);
  await sleep(2500); // past the first token's exp
  const pong = nextEvent(client, "pong");
  client.ping();
  await pong;
  assert.equal(client.state, "authenticated");
  client.close();
});

test("reconnects with a fresh ticket after the gateway restarts", async () => {
  const gw = await gateway();
  const client = clientFor(gw);
  await client.connect();
  const reconnecting = nextEvent(client, "reconnecting");
  await gw.restart();
  await reconnecting;
  await nextEvent(client, "authenticated", () => true, 15000);
  assert.equal(client.state, "authenticated");
  assert.equal(client.tickets.length, 2);
  assert.notEqual(client.tickets[0], client.tickets[1], "never reuses a consumed ticket");
  client.close();
});

test("an app-level ping notices a gateway that stopped answering", async () => {
  const gw = await gateway();
  const client = clientFor(gw, { pingIntervalMs: 200, pongTimeoutMs: 400 });
  await client.connect();
  const closed = nextEvent(client, "close");
  gw.pause();
  try {
    assert.deepEqual(await closed, { code: 4000, reason: "no pong" });
    assert.equal(client.state, "reconnecting");
  } finally {
    gw.resume();
  }
  await nextEvent(client, "authenticated", () => true, 15000);
  assert.ok(client.tickets.length >= 2);
  client.close();
});

test("stops on 4403 instead of reconnecting", async () => {
  const gw = await gateway();
  const client = clientFor(gw);
  await client.connect();
  const closed = nextEvent(client, "close");
  await gw.api("POST", "/api/users/alice/disconnect");
  assert.equal((await closed).code, 4403);
  await sleep(800);
  assert.equal(client.state, "closed");
  assert.equal(client.tickets.length, 1, "no new ticket was fetched");
});

test("stops on 4401 when a refresh is refused", async () => {
  // A notice window longer than the token's life: token_expiring comes at once.
  const gw = await gateway({ TOKEN_REFRESH_NOTICE_SECS: "3600" });
  let calls = 0;
  const client = clientFor(gw, { getJwt: () => (++calls === 1 ? mintJwt("alice") : mintJwt("mallory")) });
  const closed = nextEvent(client, "close");
  await client.connect();
  assert.equal((await closed).code, 4401);
  await sleep(800);
  assert.equal(client.state, "closed");
  assert.deepEqual([...FATAL_CLOSE_CODES], [4400, 4401, 4403]);
});

test("an invalid JWT rejects connect() without retrying", async () => {
  const gw = await gateway();
  const client = clientFor(gw, { getJwt: () => "not-a-jwt" });
  await assert.rejects(client.connect(), (error) => {
    assert.ok(error instanceof TicketError);
    assert.equal(error.status, 401);
    assert.equal(error.code, "invalid_token");
    return true;
  });
  assert.equal(client.state, "closed");
});

test("takes the gateway's Retry-After instead of a growing backoff when it answers 503", async () => {
  // A gateway whose MongoDB has never been reachable answers every ticket request with 503
  // store_unavailable and `Retry-After: 1`.
  const closedPort = await new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
  const gw = await gateway({
    MONGODB_URI: `mongodb://127.0.0.1:${closedPort}/?directConnection=true`,
    STORE_TIMEOUT_MS: "200",
  });
  const client = clientFor(gw, { backoff: { initialMs: 100, maxMs: 800, factor: 2, jitter: 0.5 } });
  const errors = [];
  const delays = [];
  client.addEventListener("error", (e) => errors.push(e.detail.error));
  client.addEventListener("reconnecting", (e) => delays.push(e.detail));
  client.connect().catch(() => {});
  while (delays.length < 3) await sleep(100);
  client.close();
  assert.ok(errors[0] instanceof TicketError);
  assert.deepEqual([errors[0].status, errors[0].code, errors[0].retryAfterMs], [503, "store_unavailable", 1000]);
  // Not 100, 200, 400 (the backoff) and not capped at maxMs: one second plus up to half of it.
  for (const { delayMs, retryAfterMs } of delays.slice(0, 3)) {
    assert.equal(retryAfterMs, 1000);
    assert.ok(delayMs >= 1000 && delayMs <= 1500, `${delayMs} ms not in [1000, 1500]`);
  }
});

test("backs off exponentially, with jitter, while the gateway is down", async () => {
  const gw = await gateway();
  const client = clientFor(gw, { backoff: { initialMs: 100, maxMs: 800, factor: 2, jitter: 0.5 } });
  await client.connect();
  const delays = [];
  client.addEventListener("reconnecting", (e) => delays.push(e.detail.delayMs));
  await gw.stop();
  while (delays.length < 5) await sleep(100);
  client.close();
  const bases = [100, 200, 400, 800, 800];
  delays.slice(0, 5).forEach((delay, i) => {
    assert.ok(delay >= bases[i] * 0.5 - 1 && delay <= bases[i] + 1, `attempt ${i + 1}: ${delay} ms not in [${bases[i] / 2}, ${bases[i]}]`);
  });
});

test("rpc() resolves with the backend's result and rejects with its error", async () => {
  // The app's backend: a real HTTP server that answers as the method says.
  const calls = [];
  const backend = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const call = JSON.parse(body);
      calls.push({ path: req.url, authorization: req.headers.authorization, call });
      const answer = call.method === "add"
        ? { result: call.data.a + call.data.b }
        : { error: { code: "no_such_method", message: `no ${call.method}` } };
      setTimeout(() => res.end(JSON.stringify(answer)), call.method === "add" ? 200 : 0);
    });
  });
  await new Promise((resolve) => backend.listen(0, "127.0.0.1", resolve));
  try {
    const key = "node-client-upstream-key-0123";
    const gw = await gateway({ UPSTREAM_URL: `http://127.0.0.1:${backend.address().port}/app`, UPSTREAM_KEY: key });
    const client = clientFor(gw);
    await client.connect();
    // Two at once: the slower first call does not hold up the second's answer.
    const [sum, refused] = await Promise.allSettled([client.rpc("add", { a: 2, b: 3 }), client.rpc("nope", null)]);
    assert.equal(sum.value, 5);
    assert.ok(refused.reason instanceof RpcError);
    assert.equal(refused.reason.code, "no_such_method");
    assert.equal(refused.reason.message, "no nope");
    assert.deepEqual(calls.map((c) => [c.path, c.authorization, c.call.user_id]).sort(), [
      ["/app/rpc", `Bearer ${key}`, "alice"],
      ["/app/rpc", `Bearer ${key}`, "alice"],
    ]);
    client.close();

    // A gateway without a backend refuses with the gateway's code.
    const plain = await gateway();
    const other = clientFor(plain);
    await other.connect();
    await assert.rejects(other.rpc("add", { a: 1, b: 1 }), (error) => error instanceof RpcError && error.code === "upstream_disabled");
    other.close();
  } finally {
    backend.close();
  }
});
