// The demo page in a real browser: headless Chromium (Debian's package) driven by
// playwright-core, against a real gateway and MongoDB.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

import { Gateway, mintJwt } from "../test/gateway.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const ARTIFACTS = process.env.ARTIFACTS_DIR || "artifacts";
if (!existsSync(CHROMIUM)) {
  throw new Error(`no Chromium at ${CHROMIUM}: install Debian's chromium package (scripts/test.sh does)`);
}

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

async function browser() {
  const launched = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives each launch a fresh temporary --user-data-dir.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  cleanups.push(() => launched.close());
  return launched;
}

const stateIs = (state) => `#state[data-state="${state}"]`;

test("the demo page authenticates, shows a broadcast, reconnects after a restart and shows failures", async () => {
  const gw = await Gateway.start();
  cleanups.push(() => gw.stop());
  const chrome = await browser();
  const page = await chrome.newPage();
  const consoleErrors = [];
  page.on("pageerror", (error) => consoleErrors.push(String(error)));

  // Signed in through the URL fragment, as the dev-mode link does.
  await page.goto(`${gw.baseUrl}/#jwt=${mintJwt("alice")}`);
  await page.waitForSelector(stateIs("authenticated"), { timeout: 15000 });
  // The expiry reads as a date and the time left, not a bare time of day.
  assert.match(await page.textContent("#user"), /as alice, token valid until .+ \(\d+ (h \d+ )?min left\)/);

  const { body } = await gw.api("POST", "/api/broadcast", { data: { from: "the server API" } });
  await page.waitForSelector(`#broadcasts li:has-text("#${body.seq}")`);
  assert.match(await page.textContent("#broadcasts"), /the server API/);

  await page.click("#echo");
  await page.waitForSelector('#messages li:has-text("echo \\"hello\\"")');

  mkdirSync(ARTIFACTS, { recursive: true });
  const screenshot = join(ARTIFACTS, "demo-authenticated.png");
  await page.screenshot({ path: screenshot, fullPage: true });

  // A gateway restart is not 4401/4403: the page reconnects with a fresh ticket by itself.
  await gw.restart();
  await page.waitForFunction(() => document.getElementById("close").textContent !== "none", null, { timeout: 15000 });
  await page.waitForSelector(stateIs("authenticated"), { timeout: 20000 });
  const again = await gw.api("POST", "/api/broadcast", { data: "after the restart" });
  await page.waitForSelector(`#broadcasts li:has-text("#${again.body.seq}")`);

  // A server-side disconnect (4403) ends it for good, with the code shown.
  await gw.api("POST", "/api/users/alice/disconnect");
  await page.waitForSelector(stateIs("closed"));
  assert.match(await page.textContent("#close"), /^closed with code 4403: disconnected by the server/);

  // An invalid JWT: the failure state and the gateway's error code.
  const refused = await chrome.newPage();
  await refused.goto(`${gw.baseUrl}/#jwt=not-a-jwt`);
  await refused.waitForSelector(stateIs("closed"), { timeout: 15000 });
  assert.match(
    await refused.textContent("#close"),
    /^the gateway refused a ticket \(HTTP 401 invalid_token\): the token is malformed/,
  );

  assert.deepEqual(consoleErrors, []);
  console.log(`screenshot: ${screenshot}`);
});

test("two pages in one channel: publications reach both, presence lists both, one unsubscribes", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ticketgate-e2e-"));
  const config = join(dir, "ticketgate.toml");
  writeFileSync(config, '[[channels.namespaces]]\nname = "demo"\npresence = true\njoin_leave = true\n');
  const gw = await Gateway.start({ CONFIG_FILE: config });
  cleanups.push(() => gw.stop());
  const chrome = await browser();
  const pages = {};
  const consoleErrors = [];
  for (const user of ["alice", "bob"]) {
    const page = await chrome.newPage();
    page.on("pageerror", (error) => consoleErrors.push(String(error)));
    await page.goto(`${gw.baseUrl}/#jwt=${mintJwt(user, 3600, { channels: ["demo:*"] })}`);
    await page.waitForSelector(stateIs("authenticated"), { timeout: 15000 });
    await page.click("#subscribe");
    await page.waitForSelector('#channel-state:has-text("subscribed to demo:lobby")');
    pages[user] = page;
  }

  const { status } = await gw.api("POST", "/api/channels/demo:lobby/publish", { data: { note: "to both pages" } });
  assert.equal(status, 202);
  for (const page of Object.values(pages)) {
    await page.waitForSelector('#publications li:has-text("to both pages")');
  }
  // Presence follows joins live: alice's page lists both.
  await pages.alice.waitForFunction(() => document.querySelectorAll("#presence-list li").length === 2);
  const listed = await pages.alice.textContent("#presence-list");
  assert.match(listed, /alice/);
  assert.match(listed, /bob/);
  mkdirSync(ARTIFACTS, { recursive: true });
  const screenshot = join(ARTIFACTS, "demo-channel.png");
  await pages.alice.screenshot({ path: screenshot, fullPage: true });

  // Bob leaves: alice's presence drops him, and the next publication reaches alice only.
  await pages.bob.click("#unsubscribe");
  await pages.alice.waitForFunction(() => {
    const items = [...document.querySelectorAll("#presence-list li")];
    return items.length === 1 && items[0].textContent.startsWith("alice");
  });
  await gw.api("POST", "/api/channels/demo:lobby/publish", { data: { note: "after bob left" } });
  await pages.alice.waitForSelector('#publications li:has-text("after bob left")');
  await pages.bob.waitForTimeout(300);
  assert.doesNotMatch(await pages.bob.textContent("#publications"), /after bob left/);
  assert.deepEqual(consoleErrors, []);
  console.log(`screenshot: ${screenshot}`);
});

test("a page recovers the publications it missed while the gateway was down", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ticketgate-e2e-"));
  const config = join(dir, "ticketgate.toml");
  writeFileSync(config, '[[channels.namespaces]]\nname = "demo"\nhistory_size = 100\nhistory_ttl_secs = 600\n');
  const gw = await Gateway.start({ CONFIG_FILE: config });
  cleanups.push(() => gw.stop());
  // A second node on the same database keeps publishing while the page's node is down.
  const other = await Gateway.beside(gw);
  cleanups.push(() => other.stop());
  const chrome = await browser();
  const page = await chrome.newPage();
  const consoleErrors = [];
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  await page.goto(`${gw.baseUrl}/#jwt=${mintJwt("alice", 3600, { channels: ["demo:*"] })}`);
  await page.waitForSelector(stateIs("authenticated"), { timeout: 15000 });
  await page.click("#subscribe");
  await page.waitForSelector('#channel-state:has-text("subscribed to demo:lobby at offset 0")');
  const publish = (note) => other.api("POST", "/api/channels/demo:lobby/publish", { data: { note } });
  await publish("before the cut");
  await page.waitForSelector('#publications li:has-text("before the cut")');

  await gw.stop();
  await page.waitForSelector(`${stateIs("reconnecting")}, ${stateIs("connecting")}`, { timeout: 15000 });
  for (const note of ["missed 1", "missed 2", "missed 3"]) assert.equal((await publish(note)).status, 202);
  await gw.launch();
  await page.waitForSelector('#channel-state:has-text("missed publications recovered")', { timeout: 30000 });
  await publish("live again");
  await page.waitForSelector('#publications li:has-text("live again")');
  const items = await page.$$eval("#publications li", (lis) => lis.map((li) => li.textContent));
  // The page lists the newest first.
  const lobby = items.slice().reverse();
  const expected = ["before the cut", "missed 1", "missed 2", "missed 3", "live again"];
  const shown = expected.map((note) => lobby.findIndex((text) => text.includes(`"${note}"`)));
  assert.ok(shown.every((index, i) => index >= 0 && (i === 0 || index > shown[i - 1])), `in order: ${JSON.stringify(lobby)}`);
  for (const [n, note] of expected.entries()) {
    assert.equal(lobby.filter((text) => text.includes(`"${note}"`)).length, 1, `${note} once`);
    assert.ok(lobby.find((text) => text.includes(`"${note}"`)).startsWith(`#${n + 1} `), `${note} is offset ${n + 1}`);
  }
  mkdirSync(ARTIFACTS, { recursive: true });
  const screenshot = join(ARTIFACTS, "demo-recovery.png");
  await page.screenshot({ path: screenshot, fullPage: true });
  assert.deepEqual(consoleErrors, []);
  console.log(`screenshot: ${screenshot}`);
});
