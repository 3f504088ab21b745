// The operations console in a real browser: headless Chromium (Debian's package) driven by
// playwright-core, against a two-node cluster on a real MongoDB.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import WebSocket from "ws";

import { Gateway, mintJwt } from "../test/gateway.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const ARTIFACTS = process.env.ARTIFACTS_DIR || "artifacts";
const PASSWORD = "console-e2e-password-0123456789";
if (!existsSync(CHROMIUM)) {
  throw new Error(`no Chromium at ${CHROMIUM}: install Debian's chromium package (scripts/test.sh does)`);
}

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** An authenticated connection of `user` on `gateway`, subscribed to `channel`. */
async function subscriber(gateway, user, channel) {
  const minted = await fetch(`${gateway.baseUrl}/token/ws`, { headers: { Authorization: `Bearer ${mintJwt(user)}` } });
  const { token } = await minted.json();
  const socket = new WebSocket(`ws://127.0.0.1:${gateway.port}/demo?token=${token}`);
  cleanups.push(() => socket.close());
  const messages = [];
  const waiters = [];
  socket.on("message", (raw) => {
    const message = JSON.parse(raw);
    messages.push(message);
    for (const waiter of waiters.splice(0)) waiter();
  });
  const until = async (predicate) => {
    while (!messages.some(predicate)) await new Promise((resolve) => waiters.push(resolve));
    return messages.find(predicate);
  };
  await new Promise((resolve, reject) => { socket.once("open", resolve); socket.once("error", reject); });
  socket.send(JSON.stringify({ type: "jwt", token: mintJwt(user) }));
  await until((m) => m.type === "authenticated");
  socket.send(JSON.stringify({ type: "subscribe", channel }));
  await until((m) => m.type === "subscribed");
  return { socket, until };
}

test("an operator signs in, sees both nodes, a channel's presence, publishes, and disconnects a user", async () => {
  const dir = mkdtempSync(join(tmpdir(), "tg-console-"));
  const config = join(dir, "channels.toml");
  writeFileSync(config, '[[channels.namespaces]]\nname = "room"\npublic = true\npresence = true\nhistory_size = 50\nhistory_ttl_secs = 600\n');
  const env = { CONSOLE_PASSWORD: PASSWORD, NODE_HEARTBEAT_SECS: "1", CONFIG_FILE: config };
  const one = await Gateway.start(env);
  cleanups.push(() => one.stop());
  const two = await Gateway.beside(one, env);
  cleanups.push(() => two.stop());

  const chrome = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  cleanups.push(() => chrome.close());
  const page = await chrome.newPage({ viewport: { width: 1200, height: 900 } });
  const problems = [];
  page.on("pageerror", (error) => problems.push(String(error)));
  // A Content-Security-Policy violation shows as a console error.
  page.on("console", (message) => { if (message.type() === "error") problems.push(message.text()); });
  page.on("dialog", (dialog) => dialog.accept());

  // A wrong password first, then the right one.
  await page.goto(`${one.baseUrl}/console`);
  await page.fill("#password", "not the console password");
  await page.click("#sign-in-form button");
  await page.waitForSelector("#sign-in-error:has-text('not right')");
  problems.length = 0; // the 401 of the wrong password is logged by the browser, as expected
  await page.fill("#password", PASSWORD);
  await page.click("#sign-in-form button");
  await page.waitForSelector("#nav:not([hidden])");

  // Subscribers on both nodes.
  const alice = await subscriber(one, "alice", "room:lobby");
  const bob = await subscriber(two, "bob", "room:lobby");

  // The overview: both nodes, the totals, and the charts.
  await page.waitForFunction(() => document.querySelectorAll("#nodes tbody tr").length === 2, null, { timeout: 15000 });
  await page.waitForFunction(() => document.getElementById("total-authenticated").textContent === "2", null, { timeout: 15000 });
  await page.waitForFunction(() => document.querySelectorAll("#charts canvas").length >= 6, null, { timeout: 15000 });
  // Let the charts gather a few samples.
  await page.waitForTimeout(3000);
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, "console-overview.png"), fullPage: true });

  // The channel: two subscribers, both in presence; publish from the form.
  await page.click("nav a[data-view=channels]");
  const row = page.locator("#channel-list tbody tr", { hasText: "room:lobby" });
  await row.waitFor();
  await page.waitForFunction(() => [...document.querySelectorAll("#channel-list tbody tr")]
    .some((tr) => tr.textContent === "room:lobby2"), null, { timeout: 15000 });
  await row.click();
  await page.waitForFunction(() => {
    const text = document.getElementById("channel-presence").textContent;
    return text.includes("alice") && text.includes("bob");
  }, null, { timeout: 15000 });
  await page.fill("#publish-data", '{"text": "hello from the console"}');
  await page.click("#publish-form button");
  // Live, through the console's own subscription, and then in the history.
  await page.waitForSelector("#channel-tail li:has-text('hello from the console')", { timeout: 15000 });
  await page.waitForSelector("#channel-history li:has-text('hello from the console')", { timeout: 15000 });
  // A publication through the other node reaches the tail too.
  await two.api("POST", "/api/channels/room:lobby/publish", { data: { text: "via node two" } });
  await page.waitForSelector("#channel-tail li:has-text('via node two')", { timeout: 15000 });
  for (const client of [alice, bob]) {
    const publication = await client.until((m) => m.type === "publication");
    assert.deepEqual(publication.data, { text: "hello from the console" });
  }
  await page.screenshot({ path: join(ARTIFACTS, "console-channel.png"), fullPage: true });

  // Look bob up: one connection, on node 2, in room:lobby.
  await page.click("nav a[data-view=users]");
  await page.fill("#user-id", "bob");
  const twoId = (await two.api("GET", "/api/nodes")).body.nodes[0].id;
  for (let tries = 0; ; tries++) {
    await page.click("#look-up");
    const text = await page.textContent("#user-connections tbody");
    if (text.includes(twoId) && text.includes("room:lobby") && text.includes("127.0.0.1") && text.includes("WebSocket")) break;
    assert.ok(tries < 50, `bob's connection never showed: ${text}`);
    await page.waitForTimeout(200);
  }
  assert.match(await page.textContent("#user-result"), /bob: 1 open connection$/);
  await page.screenshot({ path: join(ARTIFACTS, "console-user.png"), fullPage: true });

  // Disconnect bob (the confirmation is accepted): the count drops to 1.
  await page.click("#disconnect-user");
  await page.waitForSelector("#user-result:has-text('bob: disconnected')");
  await new Promise((resolve) => (bob.socket.readyState === WebSocket.CLOSED ? resolve() : bob.socket.once("close", resolve)));
  await page.click("nav a[data-view=overview]");
  await page.waitForFunction(() => document.getElementById("total-authenticated").textContent === "1", null, { timeout: 15000 });
  assert.match(one.log, /console console-session-[0-9a-f]+: disconnect user bob/);

  // Sign out: back to the sign-in form, and the session no longer works.
  await page.click("#sign-out");
  await page.waitForSelector("#sign-in:not([hidden])");
  const after = await page.evaluate(async () => (await fetch("/api/nodes", { headers: { "x-ticketgate-console": "1" } })).status);
  assert.equal(after, 401);
  assert.deepEqual(problems.filter((p) => !p.includes("401")), []);
});
