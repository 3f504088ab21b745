// One connection for all tabs (`shared: true`) in real Chromium: two tabs of one user share
// one gateway connection held by ticketgate-worker.js; each tab gets what it subscribed and
// nothing else; a tab that falls silent has its channels released within 5 s, and the last
// tab's close ends the connection.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

import { Gateway, mintJwt, sleep } from "../test/gateway.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
if (!existsSync(CHROMIUM)) {
  throw new Error(`no Chromium at ${CHROMIUM}: install Debian's chromium package (scripts/test.sh does)`);
}

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function until(what, condition, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await condition()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** A gateway with these channel namespaces; stopped at the end. */
async function gatewayWith(namespaces) {
  const config = join(mkdtempSync(join(tmpdir(), "ticketgate-shared-")), "ticketgate.toml");
  writeFileSync(config, namespaces);
  const gw = await Gateway.start({ CONFIG_FILE: config });
  cleanups.push(() => gw.stop());
  return gw;
}

/** One browser profile: its tabs share their SharedWorkers. */
async function browserContext() {
  const chrome = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  cleanups.push(() => chrome.close());
  return chrome.newContext();
}

/** A tab with a shared client of `user`, its publications collected in window.got. */
async function tab(context, gw, user, channel) {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(`${gw.baseUrl}/`);
  const started = await page.evaluate(
    async ({ jwt, channel }) => {
      const { TicketgateClient } = await import("/ticketgate.js");
      const client = new TicketgateClient({ getJwt: () => jwt, shared: true });
      window.shared = client;
      window.got = [];
      const subscription = client.subscribe(channel);
      subscription.addEventListener("publication", (e) => window.got.push([e.detail.channel, e.detail.data]));
      const session = await client.connect();
      await new Promise((resolve) => {
        if (subscription.state === "subscribed") resolve();
        subscription.addEventListener("subscribed", resolve, { once: true });
      });
      return { shared: client.shared === true, userId: session.userId, state: client.state };
    },
    { jwt: mintJwt(user), channel },
  );
  return { page, started, errors };
}

test("two tabs with shared: true share one connection, each with its own channels", async () => {
  const gw = await gatewayWith('[[channels.namespaces]]\nname = "demo"\npublic = true\npresence = true\n');
  const context = await browserContext();

  const first = await tab(context, gw, "alice", "demo:first");
  const second = await tab(context, gw, "alice", "demo:second");
  for (const { started } of [first, second]) assert.deepEqual(started, { shared: true, userId: "alice", state: "authenticated" });
  const connections = async () => (await gw.api("GET", "/api/connections?user_id=alice")).body.user_connections;
  assert.equal(await connections(), 1, "one connection for both tabs");

  for (const channel of ["demo:first", "demo:second"]) {
    assert.equal((await gw.api("POST", `/api/channels/${channel}/publish`, { data: channel })).status, 202);
  }
  await until("each tab's publication", async () => (await first.page.evaluate(() => window.got.length)) === 1 && (await second.page.evaluate(() => window.got.length)) === 1);
  await sleep(300);
  assert.deepEqual(await first.page.evaluate(() => window.got), [["demo:first", "demo:first"]]);
  assert.deepEqual(await second.page.evaluate(() => window.got), [["demo:second", "demo:second"]]);
  // An RPC-like request answers only the tab that asked: presence, from the second tab.
  const present = await second.page.evaluate(async () => (await window.shared.subscriptions.get("demo:second").presence()).clients.length);
  assert.equal(present, 1);

  // The first tab falls silent without a word (as a tab the browser froze or killed does; a
  // crash here would take the worker down with it, since headless Chromium keeps them in one
  // process): its heartbeat stops, its channel is released at the gateway within 5 s, and the
  // second tab goes on.
  await first.page.evaluate(() => {
    clearInterval(window.shared.alive);
    window.shared.port.postMessage = () => {};
  });
  const presence = async (channel) => (await gw.api("GET", `/api/channels/${channel}/presence`)).body.clients.length;
  await until("the closed tab's channel to be released", async () => (await presence("demo:first")) === 0, 5000);
  await gw.api("POST", "/api/channels/demo:second/publish", { data: "after the first tab" });
  await until("the second tab's next publication", async () => (await second.page.evaluate(() => window.got.length)) === 2);
  assert.equal(await connections(), 1);
  await first.page.close();

  // The last tab closes: the connection ends within 5 s.
  await second.page.close();
  await until("the connection to close", async () => (await connections()) === 0, 5000);
  assert.deepEqual([...first.errors, ...second.errors], []);
});

test("a shared connection's recovery after its gateway restarts reaches every tab", async () => {
  const gw = await gatewayWith('[[channels.namespaces]]\nname = "demo"\npublic = true\nhistory_size = 100\nhistory_ttl_secs = 600\n');
  // A second node on the same database publishes while the tabs' node is down.
  const other = await Gateway.beside(gw);
  cleanups.push(() => other.stop());
  const context = await browserContext();
  const tabs = [await tab(context, gw, "bob", "demo:both"), await tab(context, gw, "bob", "demo:both")];
  const publish = (n) => other.api("POST", "/api/channels/demo:both/publish", { data: n });
  await publish(1);
  const got = (t) => t.page.evaluate(() => window.got.map(([, data]) => data));
  for (const t of tabs) await until("the first publication in every tab", async () => (await got(t)).length === 1);

  await gw.stop();
  for (const n of [2, 3]) assert.equal((await publish(n)).status, 202);
  await gw.launch();
  await publish(4);
  for (const t of tabs) {
    await until("the recovered publications in every tab", async () => (await got(t)).length === 4, 30000);
    assert.deepEqual(await got(t), [1, 2, 3, 4]);
  }
  assert.deepEqual(tabs.flatMap((t) => t.errors), []);
});
