// The @archmesh/realtime package (clients/js), packed, installed and imported by its name,
// against real gateway subprocesses (in-memory broker). Run from the repo root:
//   npm --prefix tests/js install --no-audit --no-fund && node --test tests/js/
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { Gateway, WRONG_SECRET, freePort, mintToken } from "./gateway.mjs";
import { installPackage } from "./package.mjs";

const pkg = await installPackage();
const { ArchMeshRealtime, RealtimeError, State, backoffDelay, shouldReconnect } = pkg.module;

/** Records every event of `type`; next() resolves with the next detail (or times out). */
function collect(client, type) {
  const items = [];
  const waiters = [];
  client.addEventListener(type, (event) => {
    const waiter = waiters.shift();
    if (waiter) waiter(event.detail);
    else items.push(event.detail);
  });
  return {
    next(timeout = 10000) {
      if (items.length) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no ${type} event in ${timeout} ms`)), timeout);
        waiters.push((detail) => {
          clearTimeout(timer);
          resolve(detail);
        });
      });
    },
    get pending() {
      return items.length;
    },
  };
}

let gateway;
let token;
const clients = [];

function newClient(url, options) {
  const client = new ArchMeshRealtime(url, { WebSocket, ...options });
  clients.push(client);
  return client;
}

before(async () => {
  gateway = new Gateway(await freePort());
  await gateway.start();
  token = mintToken();
});

after(async () => {
  await Promise.all(clients.map((client) => client.close()));
  await gateway?.stop();
  pkg.remove();
});

test("backoffDelay stays within [0, min(cap, base * 2**n)]", () => {
  const base = 500;
  const cap = 20000;
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const ceiling = Math.min(cap, base * 2 ** attempt);
    for (let i = 0; i < 200; i += 1) {
      const delay = backoffDelay(attempt, base, cap);
      assert.ok(delay >= 0 && delay <= ceiling, `${delay} for attempt ${attempt}`);
    }
    assert.equal(backoffDelay(attempt, base, cap, () => 1), ceiling);
    assert.equal(backoffDelay(attempt, base, cap, () => 0), 0);
  }
  for (const code of [null, 1001, 1006, 1011, 1012, 4000, 4001, 4004, 4006, 4499]) {
    assert.ok(shouldReconnect(code), String(code));
  }
  for (const code of [4500, 4501, 4503, 4999, 1008, 1009]) {
    assert.ok(!shouldReconnect(code), String(code));
  }
});

test("the constructor needs a WebSocket implementation in Node 20", () => {
  const saved = globalThis.WebSocket;
  try {
    globalThis.WebSocket = undefined;
    assert.throws(() => new ArchMeshRealtime("ws://x/ws", { token: "t" }), /WebSocket/);
  } finally {
    globalThis.WebSocket = saved;
  }
});

test("connect, subscribe, receive, request helpers", async () => {
  const client = newClient(gateway.url, { token: async () => token });
  const publications = collect(client, "publication");
  const info = await client.connect();
  assert.equal(client.state, State.CONNECTED);
  assert.equal(info.user_id, "u1");

  const reply = await client.subscribe("session:s1");
  assert.equal(reply.channel, "session:s1");
  assert.equal(reply.recovered, null);
  const published = await gateway.publish("session:s1", { stage: "design", progress: 0.5 });
  const pub = await publications.next();
  assert.equal(pub.channel, "session:s1");
  assert.equal(pub.data.stage, "design");
  assert.equal(pub.offset, published.offset);
  assert.equal(pub.epoch, published.epoch);
  assert.deepEqual(client.position("session:s1"), { offset: published.offset, epoch: published.epoch });

  const [pong1, pong2, present] = await Promise.all([
    client.ping(),
    client.ping(),
    client.presence("session:s1"),
  ]);
  assert.equal(pong1.type, "pong");
  assert.notEqual(pong1.id, pong2.id);
  assert.ok(present.some((c) => c.client_id === info.client_id));
  const counted = await client.presence_stats("session:s1");
  assert.deepEqual([counted.type, counted.connections, counted.users], ["presence_stats", 1, 1]);
  const refreshed = await client.refresh();
  assert.equal(refreshed.type, "refreshed");

  await assert.rejects(client.subscribe("session:not-mine"), (err) => {
    assert.ok(err instanceof RealtimeError);
    assert.equal(err.code, "forbidden");
    assert.equal(err.channel, "session:not-mine");
    return true;
  });
  assert.deepEqual(client.channels, ["session:s1"]);
  await client.close();
  assert.equal(client.state, State.CLOSED);
});

test("duplicates are dropped", async () => {
  const client = newClient(gateway.url, { token });
  const publications = collect(client, "publication");
  await client.connect();
  const first = await client.subscribe("session:s1");
  for (const progress of [0.1, 0.2, 0.3]) {
    await gateway.publish("session:s1", { stage: "d", progress });
  }
  const got = [await publications.next(), await publications.next(), await publications.next()];
  assert.deepEqual(
    got.map((p) => p.offset),
    [first.offset + 1, first.offset + 2, first.offset + 3],
  );
  // The gateway replays everything after first.offset + 1: two of those were seen already.
  const reply = await client.subscribe("session:s1", {
    since: { offset: first.offset + 1, epoch: first.epoch },
  });
  assert.equal(reply.recovered, true);
  await gateway.publish("session:s1", { stage: "d", progress: 0.4 });
  const fourth = await publications.next();
  assert.equal(fourth.offset, first.offset + 4);
  assert.equal(publications.pending, 0);
  await client.close();
});

test("no reconnect after close code 4501 (invalid token)", async () => {
  const states = [];
  const client = newClient(gateway.url, {
    token: mintToken({ secret: WRONG_SECRET }),
    backoffBase: 10,
  });
  client.on("state", (s) => states.push(s));
  await assert.rejects(client.connect(), (err) => {
    assert.equal(err.code, "closed");
    assert.equal(err.closeCode, 4501);
    assert.equal(err.reason, "invalid_token");
    return true;
  });
  assert.deepEqual(
    states.map((s) => s.state),
    [State.CONNECTING, State.CLOSED],
  );
  assert.equal(states.at(-1).code, 4501);
  assert.equal(client.state, State.CLOSED);
  assert.deepEqual(client.closed, { code: 4501, reason: "invalid_token" });
  await assert.rejects(client.ping(), /closed/);
});

test("reconnects after a gateway restart and reports recovery_failed", async () => {
  const node = new Gateway(await freePort());
  await node.start();
  try {
    let calls = 0;
    const client = newClient(node.url, {
      token: () => {
        calls += 1;
        return token;
      },
      backoffBase: 50,
      backoffCap: 500,
      // The WebSocket's own restart path: with the default, attempts made while the node is
      // down move the client to SSE (sse.test.mjs covers that), and on a loaded machine a
      // transport move came between the restart's states.
      transports: ["websocket"],
    });
    const states = [];
    client.on("state", (s) => states.push(s));
    const publications = collect(client, "publication");
    const failures = collect(client, "recovery_failed");
    await client.connect();
    await client.subscribe("session:s1");
    const before = await node.publish("session:s1", { stage: "before", progress: 0.1 });
    assert.equal((await publications.next()).offset, before.offset);

    await node.stop();
    await node.start(); // same port, new in-memory broker: history and epoch are gone

    // The own channel's position is known from `connected` on: its lost history is told
    // too, first (with `connected`), then the session's (with its `subscribed`).
    const own = await failures.next(20000);
    assert.deepEqual([own.channel, own.reason], ["user:u1", "epoch_changed"]);
    const failure = await failures.next(20000);
    assert.equal(failure.channel, "session:s1");
    assert.equal(failure.reason, "epoch_changed");
    assert.notEqual(failure.epoch, before.epoch);

    const kinds = states.map((s) => s.state);
    assert.deepEqual(kinds.slice(0, 3), [State.CONNECTING, State.CONNECTED, State.RECONNECTING]);
    assert.equal(states[2].code, 4000);
    assert.equal(states[2].reason, "shutdown");
    assert.equal(states[2].attempt, 1);
    assert.equal(kinds.at(-1), State.CONNECTED);
    for (const s of states.slice(2, -1)) {
      assert.equal(s.state, State.RECONNECTING);
      assert.ok(s.delay >= 0 && s.delay <= Math.min(500, 50 * 2 ** (s.attempt - 1)));
    }
    assert.ok(calls >= 2, "the token provider is asked again on reconnect");
    assert.equal(client.attempt, 0);

    const afterRestart = await node.publish("session:s1", { stage: "after", progress: 0.9 });
    const pub = await publications.next();
    assert.equal(pub.offset, afterRestart.offset);
    assert.equal(pub.epoch, afterRestart.epoch);
    assert.equal(pub.data.stage, "after");
    await client.close();
    assert.equal(client.state, State.CLOSED);
  } finally {
    await node.stop();
  }
});

test("join and leave events on a channel with ARCHMESH_JOIN_LEAVE, for and to SSE clients too", async () => {
  const node = new Gateway(await freePort(), { ARCHMESH_JOIN_LEAVE: "session:" });
  await node.start();
  try {
    const fay = newClient(node.url, { token: mintToken({ user: "fay", sessions: "team" }) });
    const joins = collect(fay, "join");
    const leaves = collect(fay, "leave");
    const me = await fay.connect();
    await fay.subscribe("session:team");
    assert.deepEqual(await joins.next(), { channel: "session:team", user_id: "fay", client_id: me.client_id });
    // gus reads Server-Sent Events: announced, and told, like a WebSocket.
    const gus = newClient(node.url, { token: mintToken({ user: "gus", sessions: "team" }), transports: ["sse"] });
    const his = collect(gus, "join");
    await gus.connect();
    await gus.subscribe("session:team"); // the stream reopens with the channel: a new client id
    const him = gus.info;
    assert.equal(gus.transport, "sse");
    assert.deepEqual(await joins.next(), { channel: "session:team", user_id: "gus", client_id: him.client_id });
    assert.deepEqual(await his.next(), { channel: "session:team", user_id: "gus", client_id: him.client_id });
    await gus.close();
    assert.deepEqual(await leaves.next(), { channel: "session:team", user_id: "gus", client_id: him.client_id });
    await fay.unsubscribe("session:team");
    const other = newClient(node.url, { token: mintToken({ user: "hal", sessions: "team" }) });
    await other.connect();
    await other.subscribe("session:team");
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(joins.pending, 0); // no longer subscribed: no events
    await fay.close();
  } finally {
    await node.stop();
  }
});
