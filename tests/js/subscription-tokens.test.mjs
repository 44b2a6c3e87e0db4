// The JS SDK keeps a subscription that short-lived subscription tokens grant: its
// `subscriptionToken` option is asked ahead of each expiry and the client sends `sub_refresh`
// (on SSE: reopens the stream with the fresh token), so publications flow across several
// expiries with no gap. The @archmesh/realtime package,
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

/** A client on `transport` whose subscription to `channel` short-lived tokens grant. */
function renewedClient(transport, channel) {
  const seen = { asked: 0, offsets: [], problems: [] };
  const client = new ArchMeshRealtime(gateway.url, {
    WebSocket,
    transports: [transport],
    token: mintToken({ user: "ann", sessions: "none" }),
    subscriptionToken: async (name) => {
      assert.equal(name, channel);
      seen.asked += 1;
      return subscriptionToken({ user: "ann", channel, ttl: 3 });
    },
  });
  client.on("publication", (p) => p.channel === channel && seen.offsets.push(p.offset));
  client.on("unsubscribed", (u) => seen.problems.push(u));
  client.on("error", (err) => seen.problems.push(err));
  return { client, seen };
}

// On SSE a renewal reopens the stream with the fresh token, from the positions seen.
test("short-lived subscription tokens are renewed with no gap in offsets, on WebSocket and SSE", async () => {
  const channel = "session:renewed-js";
  const both = [renewedClient("websocket", channel), renewedClient("sse", channel)];
  try {
    for (const { client } of both) {
      await client.connect();
      await client.subscribe(channel, { token: subscriptionToken({ user: "ann", channel, ttl: 3 }) });
    }
    assert.deepEqual(
      both.map(({ client }) => client.transport),
      ["websocket", "sse"],
    );
    let last = 0;
    const until = Date.now() + 7500; // 3 s tokens: two expiries and more
    while (Date.now() < until) {
      last = (await gateway.publish(channel, { stage: "s" })).offset;
      await sleep(50);
    }
    for (const { client, seen } of both) {
      for (let waited = 0; seen.offsets.at(-1) !== last && waited < 5000; waited += 20) await sleep(20);
      const label = client.transport;
      assert.deepEqual(seen.offsets, Array.from({ length: last }, (_, i) => i + 1), label); // each once, in order
      assert.ok(seen.asked >= 2, `${label}: renewed ${seen.asked} times`);
      assert.deepEqual(seen.problems, [], label);
      assert.deepEqual(client.channels, [channel], label);
    }
  } finally {
    await Promise.all(both.map(({ client }) => client.close()));
  }
});
