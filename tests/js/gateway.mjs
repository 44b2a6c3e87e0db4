// Real `archmesh-rt gateway` processes (in-memory broker) for the Node tests, from the repo's
// .venv, on loopback ports no outgoing connection can take; and tokens minted by its CLI.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = path.join(ROOT, ".venv", "bin", "archmesh-rt");
const SECRET = "archmesh-client-tests-secret-0123456789"; // >= 32 bytes (HS256)
export const WRONG_SECRET = "not-the-gateway-secret-0123456789abcdef";
export const API_KEY = "k";
const ENV = {
  ...process.env,
  ARCHMESH_JWT_SECRET: SECRET,
  ARCHMESH_API_KEY: API_KEY,
  ARCHMESH_REDIS_URL: "",
  ARCHMESH_DRAIN_SECONDS: "0",
  ARCHMESH_LOG_LEVEL: "warning",
};

export function mintToken({ user = "u1", sessions = "s1", secret = SECRET } = {}) {
  const args = ["token", "--user", user, "--sessions", sessions, "--secret", secret];
  return execFileSync(BIN, args, { cwd: ROOT, env: ENV, encoding: "utf8" }).trim();
}

/** A subscription token (HS256, as a backend mints one), made in-process: a token callback
 * that runs often must not block the event loop on a CLI subprocess. */
export function subscriptionToken({ user = "u1", channel, ttl = 3600 }) {
  const iat = Math.floor(Date.now() / 1000);
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, channel, iat, exp: iat + ttl })}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

// Ports below the kernel's ephemeral range (as deploy/ports.py picks them): an outgoing
// connection, of which these tests open many, never takes one between this pick and the
// gateway's bind, as it can take a port that listen(0) picked. Never the same one twice.
const handedOut = new Set();
const EPHEMERAL_START = (() => {
  try {
    return Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").split(/\s+/)[0]);
  } catch {
    return 32768;
  }
})();

async function portFree(port) {
  const server = net.createServer();
  server.listen(port, "127.0.0.1");
  const outcome = await Promise.race([
    once(server, "listening").then(() => true),
    once(server, "error").then(() => false),
  ]);
  if (outcome) {
    server.close();
    await once(server, "close");
  }
  return outcome;
}

export async function freePort() {
  for (let i = 0; i < 10000; i++) {
    const port = 10000 + Math.floor(Math.random() * (EPHEMERAL_START - 10000));
    if (!handedOut.has(port) && (await portFree(port))) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("no free loopback port found");
}

export class Gateway {
  /** `env`: more ARCHMESH_* settings for this gateway (e.g. ARCHMESH_JOIN_LEAVE); `command`:
   * "gateway", or "dev" (a gateway and the notifier on one port, stores in memory). */
  constructor(port, env = {}, command = "gateway") {
    this.port = port;
    this.env = env;
    this.command = command;
    this.url = `ws://127.0.0.1:${port}/ws`;
    this.http = `http://127.0.0.1:${port}`;
    this.proc = null;
    this.log = "";
  }

  async start() {
    const node = `js-tests-${this.port}`;
    const proc = spawn(BIN, [this.command, "--port", String(this.port)], {
      cwd: ROOT,
      env: { ...ENV, ...this.env, ARCHMESH_NODE_ID: node },
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.proc = proc;
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (chunk) => {
      this.log = (this.log + chunk).slice(-4000);
    });
    const deadline = Date.now() + 20000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`${this.command} exited: ${this.log}`);
      try {
        const response = await fetch(`${this.http}/healthz`);
        // Ours, not a process that took the port first (ours then fails to bind and exits).
        if (response.status === 200 && (await response.json()).node === node) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`${this.command} not healthy in 20 s: ${this.log}`);
      await new Promise((resolve) => setTimeout(resolve, 50)); // poll interval
    }
  }

  /** SIGTERM: the gateway sends every client disconnect 4000, then exits. */
  async stop() {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = once(proc, "exit");
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 15000);
    await exited;
    clearTimeout(timer);
  }

  /** POST /api/control/<command> (e.g. "disconnect") with `body`. */
  async control(command, body) {
    const response = await fetch(`${this.http}/api/control/${command}`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    assert.equal(response.status, 200, await response.clone().text());
    return response.json();
  }

  /** POST /api/notifications (the notifier's, under `dev`): resolves with the id queued. */
  async notify(request) {
    const response = await fetch(`${this.http}/api/notifications`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
    assert.equal(response.status, 202, await response.clone().text());
    return (await response.json()).id;
  }

  async publish(channel, data) {
    const response = await fetch(`${this.http}/api/publish`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ channel, data: { type: "workflow_update", ...data } }),
    });
    assert.equal(response.status, 200, await response.clone().text());
    return response.json();
  }
}
