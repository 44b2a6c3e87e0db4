// The JS client on Server-Sent Events: behind a proxy that refuses every WebSocket upgrade
// (403) it moves to GET /sse by itself (the default configuration), subscribe/unsubscribe
// reopen the stream with the new channel set and the positions seen, and once the proxy lets
// upgrades through again it moves back to a WebSocket; across every move, publications
// flowing all along arrive once each, in order.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
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
let upgradesPassed = 0;
let refuseUpgrades = true;
const tunnels = new Set(); // upgraded connections passed through
const clients = [];

/** Forwards plain HTTP to the gateway (streaming); answers every Upgrade with 403 while
 * `refuseUpgrades`, else passes it through as a raw TCP tunnel. */
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
  server.on("upgrade", (req, socket, head) => {
    if (refuseUpgrades) {
      upgradesRefused += 1;
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    upgradesPassed += 1;
    const upstream = net.connect(target, "127.0.0.1", () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`];
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`);
      upstream.write(`${lines.join("\r\n")}\r\n\r\n`);
      if (head.length) upstream.write(head);
      socket.pipe(upstream).pipe(socket);
    });
    const tunnel = { socket, upstream };
    tunnels.add(tunnel);
    const drop = () => {
      tunnels.delete(tunnel);
      socket.destroy();
      upstream.destroy();
    };
    upstream.on("error", drop).on("close", drop);
    socket.on("error", drop).on("close", drop);
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
    backoffBase: 10,
    backoffCap: 50,
  });
  assert.deepEqual(client.transports, ["websocket", "sse"]); // the default: falls back
  const moves = events(client, "transport");
  clients.push(client);
  assert.equal(client.transport, "websocket");
  const next = events(client, "publication");
  const info = await client.connect();
  assert.equal(client.transport, "sse");
  assert.deepEqual(await moves(), { transport: "sse", previous: "websocket" });
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

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(predicate, what, timeout = 15000) {
  const deadline = Date.now() + timeout;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20); // poll interval
  }
}

test("moves back to a WebSocket once upgrades pass, and to SSE again: nothing lost or repeated", async () => {
  refuseUpgrades = true;
  const channels = ["session:m1", "session:m2"];
  const client = new ArchMeshRealtime(proxyUrl, {
    WebSocket,
    token: mintToken({ user: "mover", sessions: "m1,m2" }),
    backoffBase: 10,
    backoffCap: 50,
    websocketRetryInterval: 300,
  });
  clients.push(client);
  const moves = [];
  const received = [];
  client.on("transport", (move) => moves.push(move.transport));
  client.on("publication", (p) => received.push([p.channel, p.offset, client.transport]));
  await client.connect();
  assert.equal(client.transport, "sse");
  for (const channel of channels) await client.subscribe(channel);

  // Publications flow all along, on both channels, paced so that they span every move.
  const published = [];
  let publishing = true;
  const publisher = (async () => {
    for (let n = 0; publishing; n++) {
      const channel = channels[n % 2];
      published.push([channel, (await gateway.publish(channel, { n })).offset]);
      await sleep(10); // pacing, not waiting for anything
    }
  })();
  const on = (transport) => received.filter((r) => r[2] === transport).length;
  // A try of a WebSocket while on SSE that the proxy refuses leaves the client where it is.
  const refusedBefore = upgradesRefused;
  await until(() => on("sse") >= 20 && upgradesRefused > refusedBefore, "a refused try on SSE");
  assert.equal(client.transport, "sse");
  assert.equal(client.state, State.CONNECTED);
  const probesRefused = upgradesRefused - refusedBefore;

  refuseUpgrades = false; // the proxy lets upgrades through: the next probe opens
  await until(() => client.transport === "websocket" && client.state === State.CONNECTED, "the move to WebSocket");
  await until(() => on("websocket") >= 20, "publications on the WebSocket");
  assert.ok(client.info.client_id);
  await client.ping(); // requests work again

  refuseUpgrades = true; // and refuses them again, dropping the WebSocket
  for (const tunnel of [...tunnels]) tunnel.socket.destroy();
  await until(() => moves.length === 3 && client.state === State.CONNECTED, "the move back to SSE");
  const before = on("sse");
  await until(() => on("sse") >= before + 20, "publications on SSE again");
  publishing = false;
  await publisher;
  await until(() => received.length >= published.length, "every publication");

  const seen = received.map(([channel, offset]) => `${channel}@${offset}`);
  const duplicates = seen.length - new Set(seen).size;
  let gaps = 0;
  for (const channel of channels) {
    const offsets = received.filter((r) => r[0] === channel).map((r) => r[1]);
    const sent = published.filter((p) => p[0] === channel).map((p) => p[1]);
    assert.deepEqual(offsets, sent); // each once, in order
    for (let i = 1; i < offsets.length; i++) if (offsets[i] !== offsets[i - 1] + 1) gaps += 1;
  }
  const perTransport = { sse: on("sse"), websocket: on("websocket") };
  console.log(
    `published=${published.length} received=${received.length} duplicates=${duplicates} gaps=${gaps} ` +
      `by=${JSON.stringify(perTransport)} moves=${moves.join(">")} probes_refused=${probesRefused} ` +
      `upgrades_passed=${upgradesPassed}`,
  );
  assert.deepEqual([received.length, duplicates, gaps], [published.length, 0, 0]);
  assert.deepEqual(moves, ["sse", "websocket", "sse"]);
  assert.equal(client.transport, "sse");
  await client.close();
});

test("a gateway that was down is not taken for a proxy: the client ends on a WebSocket", async () => {
  const node = new Gateway(await freePort());
  await node.start();
  const client = new ArchMeshRealtime(node.url, {
    WebSocket,
    token: mintToken({ user: "restart", sessions: "r1" }),
    backoffBase: 10,
    backoffCap: 50,
  });
  clients.push(client);
  const reasons = [];
  const moves = [];
  client.on("state", (change) => reasons.push(String(change.reason)));
  client.on("transport", (move) => moves.push(move.transport));
  try {
    await client.connect();
    await client.subscribe("session:r1");
    await node.stop();
    // Down: WebSockets fail before they open, and so does the SSE attempt that follows them.
    await until(() => reasons.some((r) => r.startsWith("SSE stream failed")), "an SSE attempt while down");
    await node.start();
    await until(() => client.state === State.CONNECTED && client.transport === "websocket", "back on a WebSocket");
    const got = events(client, "publication");
    const sent = await node.publish("session:r1", { n: 1 });
    assert.equal((await got()).offset, sent.offset);
    console.log(`moves while down and back: ${moves.join(">") || "none"}`);
    assert.ok(moves.length === 0 || moves.at(-1) === "websocket", moves.join(">"));
  } finally {
    await client.close();
    await node.stop();
  }
});
