// A WebSocket that never opens (a proxy that swallows the upgrade) counts as failed after
// websocketTimeoutMs, and the client opens SSE instead. Its own file: the client remembers a
// failed WebSocket for the page (here, the process) for ten minutes.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { EventSource } from "eventsource";

import { TicketgateClient } from "../ticketgate.js";
import { Gateway, mintJwt, nextEvent } from "./gateway.mjs";

const gateways = [];
after(async () => Promise.all(gateways.map((g) => g.stop())));

/** A WebSocket whose upgrade never completes and never fails. */
class SilentWebSocket {
  constructor() {
    this.readyState = 0;
    SilentWebSocket.made += 1;
  }
  send() {}
  close() {
    this.readyState = 3;
  }
}
SilentWebSocket.made = 0;

test("a WebSocket that does not open within websocketTimeoutMs falls back to SSE", async () => {
  const gw = await Gateway.start();
  gateways.push(gw);
  const client = new TicketgateClient({
    baseUrl: gw.baseUrl,
    WebSocket: SilentWebSocket,
    EventSource,
    websocketTimeoutMs: 300,
    getJwt: () => mintJwt("erin", 3600),
  });
  const started = Date.now();
  const fallback = nextEvent(client, "fallback");
  await client.connect();
  await fallback;
  assert.ok(Date.now() - started >= 300);
  assert.equal(client.transport, "sse");
  assert.equal(SilentWebSocket.made, 1);
  client.close();
});
