// The JS client on Server-Sent Events: behind a proxy that refuses every WebSocket upgrade
// (403) it moves to GET /sse by itself, and subscribe/unsubscribe reopen the stream with the
// new channel set and the positions seen, losing and repeating nothing.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { once } from "node:events";
import WebSocket from "ws";

import { Gateway, freePort, mintToken } from "./gateway.mjs";
import { installPackage } from "./package.mjs";

const pkg = await installPackage();
const { ArchMeshRealtime, State } = pkg.module;

let gateway;
let proxy;
let proxyUrl;
let upgradesRefused = 0;
const clients = [];

/** Forwards plain HTTP to the gateway (streaming), answers every Upgrade with 403. */
async function startProxy(target) {
  const server = http.createServer((req, res) => {
    const upstream = http.request(
      { host: "127.0.0.1", port: target, method: req.method, path: req.url, headers: req.headers },
      (reply) => {
        res.writeHead(reply.statusCode, reply.headers);
        reply.pipe(res);
      },
    );
    upstream.on("error", () => res.destroy());
    res.on("close", () => upstream.destroy());
    req.pipe(upstream);
  });
  server.on("upgrade", (req, socket) => {
    upgradesRefused += 1;
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  server.listen(await freePort(), "127.0.0.1");
  await once(server, "listening");
  return server;
}

function events(client, type) {
  const items = [];
  const waiters = [];
  client.addEventListener(type, (event) => {
    const waiter = waiters.shift();
    if (waiter) waiter(event.detail);
    else items.push(event.detail);
  });
  return (timeout = 10000) =>
    items.length
      ? Promise.resolve(items.shift())
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ${type} in ${timeout} ms`)), timeout);
          waiters.push((detail) => (clearTimeout(timer), resolve(detail)));
        });
}

before(async () => {
  gateway = new Gateway(await freePort());
  await gateway.start();
  proxy = await startProxy(gateway.port);
  proxyUrl = `ws://127.0.0.1:${proxy.address().port}/ws`;
});

after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  proxy?.close();
  await gateway?.stop();
  pkg.remove();
});

test("falls back to SSE when upgrades are refused; subscribe and unsubscribe reopen the stream", async () => {
  const token = mintToken({ sessions: "s1,s2" });
  const client = new ArchMeshRealtime(proxyUrl, {
    WebSocket,
    token: async () => token,
    transports: ["websocket", "sse"],
    sseFallbackAfter: 2,
    backoffBase: 10,
    backoffCap: 50,
  });
  clients.push(client);
  assert.equal(client.transport, "websocket");
  const next = events(client, "publication");
  const info = await client.connect();
  assert.equal(client.transport, "sse");
  assert.equal(client.state, State.CONNECTED);
  assert.equal(info.user_id, "u1");
  assert.ok(upgradesRefused >= 2, `upgrades refused: ${upgradesRefused}`);

  const reply = await client.subscribe("session:s1");
  assert.equal(reply.channel, "session:s1");
  const first = await gateway.publish("session:s1", { n: 1 });
  assert.equal((await next()).offset, first.offset);

  // Published while the stream reopens for s2: delivered once, from the position sent.
  const subscribing = client.subscribe("session:s2");
  const during = await gateway.publish("session:s1", { n: 2 });
  const second = await subscribing;
  assert.equal(second.channel, "session:s2");
  const got = await next();
  assert.equal(got.channel, "session:s1");
  assert.equal(got.offset, during.offset);
  await gateway.publish("session:s2", { n: 3 });
  const s2 = await next();
  assert.equal(s2.channel, "session:s2");
  assert.equal(s2.data.n, 3);

  await client.unsubscribe("session:s2");
  await new Promise((resolve) => setTimeout(resolve, 300)); // the stream reopens without s2
  await gateway.publish("session:s2", { n: 4 });
  const last = await gateway.publish("session:s1", { n: 5 });
  const after5 = await next();
  assert.equal(after5.channel, "session:s1"); // s2's n=4 never arrives
  assert.equal(after5.offset, last.offset);
  assert.deepEqual(client.channels, ["session:s1"]);

  await assert.rejects(client.ping(), (err) => err.code === "unsupported");
  await client.close();
  assert.equal(client.state, State.CLOSED);
});

test("transports: [\"sse\"] starts on SSE; a refused token is final", async () => {
  const client = new ArchMeshRealtime(gateway.url, {
    token: "not-a-token",
    transports: ["sse"],
    backoffBase: 10,
  });
  clients.push(client);
  assert.equal(client.transport, "sse");
  await assert.rejects(client.connect(), (err) => err.code === "closed" && /401/.test(err.message));
  assert.equal(client.state, State.CLOSED);
});
