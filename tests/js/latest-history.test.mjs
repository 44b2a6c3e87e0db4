// The JS SDK's `latest` on subscribe (and later history), against a real gateway subprocess.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { Gateway, freePort, mintToken } from "./gateway.mjs";
import { installPackage } from "./package.mjs";

const pkg = await installPackage();
const { ArchMeshRealtime } = pkg.module;

let gateway;
const clients = [];

function nextPublication(client, timeout = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no publication")), timeout);
    client.addEventListener(
      "publication",
      (event) => {
        clearTimeout(timer);
        resolve(event.detail);
      },
      { once: true },
    );
  });
}

before(async () => {
  gateway = new Gateway(await freePort());
  await gateway.start();
});

after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await gateway?.stop();
  pkg.remove();
});

test("subscribe with latest delivers the channel's latest publication first", async () => {
  await gateway.publish("session:l1", { type: "t", n: 1 });
  const last = await gateway.publish("session:l1", { type: "t", n: 2 });
  const client = new ArchMeshRealtime(gateway.url, {
    WebSocket,
    token: mintToken({ user: "u1", sessions: "l1" }),
  });
  clients.push(client);
  await client.connect();
  const first = nextPublication(client);
  const reply = await client.subscribe("session:l1", { latest: true });
  assert.equal(reply.offset, last.offset);
  const pub = await first;
  assert.equal(pub.offset, last.offset);
  assert.equal(pub.data.n, 2);
});

test("history pages forwards and in reverse, and limit 0 gives the position", async () => {
  let last;
  for (let n = 1; n <= 5; n++) last = await gateway.publish("session:h1", { type: "t", n });
  const client = new ArchMeshRealtime(gateway.url, {
    WebSocket,
    token: mintToken({ user: "u2", sessions: "h1" }),
  });
  clients.push(client);
  await client.connect();
  const first = await client.history("session:h1", { limit: 2 });
  assert.deepEqual(first.publications.map((p) => p.data.n), [1, 2]);
  assert.equal(first.offset, last.offset);
  assert.equal(first.epoch, last.epoch);
  const next = await client.history("session:h1", { limit: 2, since: { offset: 2, epoch: last.epoch } });
  assert.deepEqual(next.publications.map((p) => p.offset), [3, 4]);
  const newest = await client.history("session:h1", { limit: 2, reverse: true });
  assert.deepEqual(newest.publications.map((p) => p.data.n), [5, 4]);
  const position = await client.history("session:h1", { limit: 0 });
  assert.deepEqual([position.publications, position.offset], [[], last.offset]);
});

test("the own user channel is recovered from the first moment", async () => {
  let release = null;
  let held = false;
  const client = new ArchMeshRealtime(gateway.url, {
    WebSocket,
    backoffBase: 50,
    backoffCap: 200,
    // Held while the client is away, so it misses what is published meanwhile.
    token: async () => {
      if (held) await new Promise((resolve) => (release = resolve));
      return mintToken({ user: "u3", sessions: "x" });
    },
  });
  clients.push(client);
  await client.connect();
  const start = client.position("user:u3");
  assert.equal(start?.offset, 0); // from `connected`, before any publication on it
  const got = [];
  client.addEventListener("publication", (event) => got.push(event.detail));
  held = true;
  const away = new Promise((resolve) => {
    const onState = (event) => {
      if (event.detail.state !== "reconnecting") return;
      client.removeEventListener("state", onState);
      resolve();
    };
    client.addEventListener("state", onState);
  });
  await gateway.control("disconnect", { user: "u3", reconnect: true });
  await away;
  await gateway.publish("user:u3", { n: 1 });
  await gateway.publish("user:u3", { n: 2 });
  while (!release) await new Promise((resolve) => setTimeout(resolve, 20));
  held = false;
  release();
  const deadline = Date.now() + 10000;
  while (got.length < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  assert.deepEqual(got.map((p) => [p.channel, p.offset, p.data.n]), [
    ["user:u3", 1, 1],
    ["user:u3", 2, 2],
  ]);
  assert.deepEqual(client.position("user:u3"), { offset: 2, epoch: start.epoch });
});
