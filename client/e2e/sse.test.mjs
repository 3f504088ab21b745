// The demo page in headless Chromium through nginx configured to refuse WebSocket upgrades
// (deploy/nginx-no-websockets.conf): the page falls back to Server-Sent Events by itself and
// shows broadcasts, a channel's publications, an RPC answer, and the publications it missed
// while its gateway restarted.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

import { Gateway, mintJwt, sleep } from "../test/gateway.mjs";

const CHROMIUM = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
const ARTIFACTS = process.env.ARTIFACTS_DIR || "artifacts";
const REPO = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
if (!existsSync(CHROMIUM)) {
  throw new Error(`no Chromium at ${CHROMIUM}: install Debian's chromium package (scripts/test.sh does)`);
}

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

/** nginx from the fixture, in front of `gateway`; killed (with its workers) at the end. */
async function nginxRefusingUpgrades(gateway) {
  let bin;
  try {
    bin = execFileSync("bash", [join(REPO, "scripts/install-nginx.sh")], { encoding: "utf8" }).trim();
  } catch (error) {
    throw new Error(`this test needs nginx (scripts/install-nginx.sh unpacks Debian's package): ${error.message}`);
  }
  const dir = mkdtempSync(join(tmpdir(), "ticketgate-nginx-"));
  const port = await freePort();
  let config = readFileSync(join(REPO, "deploy/nginx-no-websockets.conf"), "utf8");
  const swap = (from, to) => {
    assert.ok(config.includes(from), `deploy/nginx-no-websockets.conf lacks ${from}`);
    config = config.replace(from, to);
  };
  swap("server node1:8080;", `server 127.0.0.1:${gateway.port};`);
  swap("listen 8091;", `listen 127.0.0.1:${port};`);
  swap(
    "http {",
    `http {\n  access_log off;\n  client_body_temp_path ${dir}/body;\n  proxy_temp_path ${dir}/proxy;\n` +
      `  fastcgi_temp_path ${dir}/fastcgi;\n  uwsgi_temp_path ${dir}/uwsgi;\n  scgi_temp_path ${dir}/scgi;`,
  );
  writeFileSync(join(dir, "nginx.conf"), `daemon off;\npid ${dir}/nginx.pid;\nerror_log ${dir}/error.log;\n${config}`);
  // A process group of its own, so the cleanup ends the workers with the master.
  const child = spawn(bin, ["-p", dir, "-e", join(dir, "error.log"), "-c", join(dir, "nginx.conf")], {
    detached: true,
    stdio: "ignore",
  });
  cleanups.push(async () => {
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  });
  const deadline = Date.now() + 10000;
  for (;;) {
    const up = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.end();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (up) break;
    if (Date.now() > deadline) throw new Error(`nginx did not listen: ${readFileSync(join(dir, "error.log"), "utf8")}`);
    await sleep(50);
  }
  return `http://127.0.0.1:${port}`;
}

/** The app's backend for RPCs: answers `add` with the sum. */
async function backend() {
  const server = http.createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      const call = JSON.parse(body);
      res.end(JSON.stringify({ result: call.data.a + call.data.b }));
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => new Promise((resolve) => server.close(resolve)));
  return `http://127.0.0.1:${server.address().port}`;
}

const stateIs = (state) => `#state[data-state="${state}"]`;

test("behind a proxy that refuses upgrades, the demo page falls back to SSE and does everything", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ticketgate-e2e-"));
  const config = join(dir, "ticketgate.toml");
  writeFileSync(config, '[[channels.namespaces]]\nname = "demo"\nhistory_size = 100\nhistory_ttl_secs = 600\n');
  const gw = await Gateway.start({
    CONFIG_FILE: config,
    UPSTREAM_URL: await backend(),
    UPSTREAM_KEY: "e2e-upstream-key-0123456789",
  });
  cleanups.push(() => gw.stop());
  // A second node on the same database publishes while the page's node restarts.
  const other = await Gateway.beside(gw);
  cleanups.push(() => other.stop());
  const proxy = await nginxRefusingUpgrades(gw);

  const chrome = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  cleanups.push(() => chrome.close());
  const page = await chrome.newPage();
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  await page.goto(`${proxy}/#jwt=${mintJwt("alice", 3600, { channels: ["demo:*"] })}`);
  await page.waitForSelector(stateIs("authenticated"), { timeout: 20000 });
  assert.equal(await page.getAttribute("#transport", "data-transport"), "sse");
  assert.equal(await page.textContent("#transport"), "Server-Sent Events");
  assert.equal(await page.evaluate(() => window.ticketgate.transport), "sse");

  // A broadcast, a channel's publication, an RPC answer.
  const { body } = await gw.api("POST", "/api/broadcast", { data: { through: "nginx" } });
  await page.waitForSelector(`#broadcasts li:has-text("#${body.seq}")`);
  await page.click("#subscribe");
  await page.waitForSelector('#channel-state:has-text("subscribed to demo:lobby at offset 0")');
  const publish = (note) => other.api("POST", "/api/channels/demo:lobby/publish", { data: { note } });
  await publish("before the restart");
  await page.waitForSelector('#publications li:has-text("before the restart")');
  assert.equal(await page.evaluate(() => window.ticketgate.rpc("add", { a: 2, b: 40 })), 42);

  // The page's gateway restarts: publications made meanwhile arrive after the reconnect.
  await gw.stop();
  await page.waitForSelector(`${stateIs("reconnecting")}, ${stateIs("connecting")}`, { timeout: 15000 });
  for (const note of ["missed 1", "missed 2"]) assert.equal((await publish(note)).status, 202);
  await gw.launch();
  await page.waitForSelector('#channel-state:has-text("missed publications recovered")', { timeout: 30000 });
  await publish("live again");
  await page.waitForSelector('#publications li:has-text("live again")');
  const lobby = (await page.$$eval("#publications li", (lis) => lis.map((li) => li.textContent))).reverse();
  const order = ["before the restart", "missed 1", "missed 2", "live again"].map((note) =>
    lobby.findIndex((text) => text.includes(`"${note}"`)),
  );
  assert.ok(order.every((index, i) => index >= 0 && (i === 0 || index > order[i - 1])), JSON.stringify(lobby));
  assert.equal(await page.getAttribute("#transport", "data-transport"), "sse");

  mkdirSync(ARTIFACTS, { recursive: true });
  const screenshot = join(ARTIFACTS, "demo-sse.png");
  await page.screenshot({ path: screenshot, fullPage: true });
  assert.deepEqual(pageErrors, []);
  console.log(`screenshot: ${screenshot}`);
});
