// Test helpers: real ticketgate processes (binary from TICKETGATE_BIN, MongoDB from
// MONGODB_URI, both given by the Rust test that runs this suite), HS256 JWTs, and the API.
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import net from "node:net";

export const SECRET = "node-client-test-secret-0123456789abcdef";
export const API_KEY = "node-client-test-api-key";

const BIN = process.env.TICKETGATE_BIN;
const MONGODB_URI = process.env.MONGODB_URI;
if (!BIN || !MONGODB_URI) {
  throw new Error("run through `cargo test` (tests/api/client_js.rs), which sets TICKETGATE_BIN and MONGODB_URI");
}

const b64url = (data) => Buffer.from(data).toString("base64url");

/** An HS256 JWT for `sub`, valid for `ttlSecs`. */
export function mintJwt(sub, ttlSecs = 3600, extra = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const payload = b64url(JSON.stringify({ sub, iat: now, exp: now + ttlSecs, ...extra }));
  const signature = createHmac("sha256", SECRET).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

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

/** A gateway on a fixed port, which can be stopped, restarted on the same port and paused. */
export class Gateway {
  static async start(env = {}) {
    const gateway = new Gateway(await freePort(), `tg_node_${randomBytes(5).toString("hex")}`, env);
    await gateway.launch();
    return gateway;
  }

  /** Another gateway on the same database: a second node of the same cluster. */
  static async beside(other, env = {}) {
    const gateway = new Gateway(await freePort(), other.env.MONGODB_DATABASE, { ...other.extraEnv, ...env });
    await gateway.launch();
    return gateway;
  }

  constructor(port, database, env) {
    this.extraEnv = env;
    this.port = port;
    this.baseUrl = `http://127.0.0.1:${port}`;
    this.env = {
      PATH: process.env.PATH,
      BIND_ADDR: `127.0.0.1:${port}`,
      JWT_SECRET: SECRET,
      JWT_LEEWAY_SECS: "0",
      API_KEY,
      MONGODB_URI,
      MONGODB_DATABASE: database,
      RUST_LOG: "info",
      // A generous store bound on a loaded test machine (the Rust outage tests set short ones).
      STORE_TIMEOUT_MS: "10000",
      ...env,
    };
    this.log = "";
  }

  launch() {
    this.child = spawn(BIN, [], { env: this.env, stdio: ["ignore", "ignore", "pipe"] });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the gateway did not start:\n${this.log}`)), 15000);
      this.child.stderr.on("data", (chunk) => {
        this.log += chunk;
        if (this.log.includes("listening on")) {
          clearTimeout(timer);
          resolve();
        }
      });
      this.child.on("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`the gateway exited with ${code}:\n${this.log}`));
      });
    });
  }

  /** Kills the process (no drain: as a crash or a deploy would). */
  async stop() {
    if (!this.child || this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.kill("SIGKILL");
    await exited;
  }

  async restart() {
    await this.stop();
    this.log = "";
    await this.launch();
  }

  pause() {
    this.child.kill("SIGSTOP");
  }

  resume() {
    this.child.kill("SIGCONT");
  }

  async api(method, path, body) {
    const response = await fetch(`${this.baseUrl}${path}`, {
      method,
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  }
}

/** Resolves with the first event of `type` (matching `predicate`), or rejects after `ms`. */
export function nextEvent(target, type, predicate = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} event within ${ms} ms`)), ms);
    const listener = (event) => {
      if (!predicate(event.detail)) return;
      clearTimeout(timer);
      target.removeEventListener(type, listener);
      resolve(event.detail);
    };
    target.addEventListener(type, listener);
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
