// The JS SDK keeps a subscription that short-lived subscription tokens grant: its
// `subscriptionToken` option is asked ahead of each expiry and the client sends `sub_refresh`,
// so publications flow across several expiries with no gap. The @archmesh/realtime package,
// packed and installed, against a real gateway subprocess (in-memory broker).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { Gateway, freePort, mintToken, subscriptionToken } from "./gateway.mjs";
import { installPackage } from "./package.mjs";

const pkg = await installPackage();
const { ArchMeshRealtime } = pkg.module;

let gateway;

before(async () => {
  gateway = new Gateway(await freePort());
  await gateway.start();
});

after(async () => {
  await gateway?.stop();
  pkg.remove();
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test("short-lived subscription tokens are renewed with no gap in offsets", async () => {
  const channel = "session:renewed-js";
  const asked = [];
  const client = new ArchMeshRealtime(gateway.url, {
    WebSocket,
    token: mintToken({ user: "ann", sessions: "none" }),
    subscriptionToken: async (name) => {
      assert.equal(name, channel);
      asked.push(Date.now());
      return subscriptionToken({ user: "ann", channel, ttl: 3 });
    },
  });
  const offsets = [];
  const problems = [];
  client.on("publication", (p) => p.channel === channel && offsets.push(p.offset));
  client.on("unsubscribed", (u) => problems.push(u));
  client.on("error", (err) => problems.push(err));
  try {
    await client.connect();
    await client.subscribe(channel, { token: subscriptionToken({ user: "ann", channel, ttl: 3 }) });
    let last = 0;
    const until = Date.now() + 7500; // 3 s tokens: two expiries and more
    while (Date.now() < until) {
      last = (await gateway.publish(channel, { stage: "s" })).offset;
      await sleep(50);
    }
    for (let waited = 0; offsets.at(-1) !== last && waited < 5000; waited += 20) await sleep(20);
    assert.deepEqual(offsets, Array.from({ length: last }, (_, i) => i + 1)); // each once, in order
    assert.ok(asked.length >= 2, `renewed ${asked.length} times`);
    assert.deepEqual(problems, []);
    assert.deepEqual(client.channels, [channel]);
  } finally {
    await client.close();
  }
});
