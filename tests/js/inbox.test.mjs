// The inbox client of @archmesh/realtime (ArchMeshInbox), packed and installed, against a real
// `archmesh-rt dev` (a gateway and the notifier on one port, stores in memory): notifications
// sent through the notifier's API are paged with the SDK, marked seen, read and archived, and
// the live counts the notifier publishes on the user's channel follow each change.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";

import { API_KEY, Gateway, WRONG_SECRET, freePort, mintToken } from "./gateway.mjs";
import { installPackage } from "./package.mjs";

const pkg = await installPackage();
const { ArchMeshInbox, ArchMeshRealtime, InboxError } = pkg.module;

let dev;

before(async () => {
  dev = new Gateway(await freePort(), {}, "dev");
  await dev.start();
});

after(async () => {
  await dev?.stop();
  pkg.remove();
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function rejection(promise) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail("expected a rejection");
}

test("the inbox client pages, marks and follows the live counts of a user's inbox", async () => {
  const user = "ina";
  const good = mintToken({ user, sessions: "none" });
  const stale = mintToken({ user, sessions: "none", secret: WRONG_SECRET });
  let asked = 0;
  // The first token is refused (401): the provider is asked for a fresh one, once.
  const inbox = new ArchMeshInbox({
    user,
    baseUrl: dev.http,
    token: () => (++asked === 1 ? stale : good),
  });
  const client = new ArchMeshRealtime(dev.url, { WebSocket, token: good });
  const counts = [];
  const items = [];
  const seen = [];
  inbox.on("counts", (c) => counts.push(c));
  inbox.on("item", (item) => items.push(item));
  inbox.on("seen", (report) => seen.push(report));
  try {
    await client.connect();
    const stop = inbox.follow(client);

    const ids = [];
    for (const title of ["first", "second", "third"]) {
      ids.push(await dev.notify({ user_id: user, type: "comment_added", title, channels: ["in_app"] }));
      await until(() => items.length === ids.length, `live item ${title}`);
    }
    assert.deepEqual(
      items.map((i) => [i.id, i.type, i.title, i.seen, i.read, i.archived]),
      ids.map((id, n) => [id, "comment_added", ["first", "second", "third"][n], false, false, false]),
    );
    await until(() => counts.at(-1)?.unread === 3, "counts after three");
    assert.deepEqual(counts.at(-1), { unseen: 3, unread: 3 });
    const before = counts.length;

    const first = await inbox.page({ limit: 2 });
    assert.equal(asked, 2, "a fresh token after the 401");
    assert.deepEqual(first.items.map((i) => i.id), [ids[2], ids[1]]); // newest first
    assert.deepEqual([first.unseen, first.unread], [3, 3]);
    assert.ok(first.next_cursor);
    const rest = await inbox.page({ limit: 2, cursor: first.next_cursor });
    assert.deepEqual(rest.items.map((i) => i.id), [ids[0]]);
    assert.equal(rest.next_cursor, null);
    assert.deepEqual((await inbox.page({ types: ["workflow_failed"] })).items, []);
    assert.equal((await inbox.page({ types: ["workflow_failed", "comment_added"] })).items.length, 3);

    assert.deepEqual(await inbox.seen([ids[0]]), { unseen: 2, unread: 3, unknown: [] });
    // Displayed (Node has no IntersectionObserver: noted at once), then reported in a batch.
    // Ids noted together go in one request; an id goes once.
    inbox.observeSeen(null, ids[1]);
    inbox.observeSeen(null, ids[2]);
    inbox.observeSeen(null, ids[1]);
    await until(() => seen.length === 1, "the seen report");
    assert.deepEqual(seen, [{ ids: [ids[1], ids[2]], unknown: [], unseen: 0, unread: 3 }]);
    assert.deepEqual(await inbox.read(ids[2]), { unseen: 0, unread: 2 });
    assert.deepEqual(await inbox.archive([ids[0], "not-there"]), { unseen: 0, unread: 1, unknown: ["not-there"] });
    assert.deepEqual((await inbox.page({ archived: true })).items.map((i) => [i.id, i.read, i.archived]), [
      [ids[0], true, true],
    ]);
    assert.deepEqual(await inbox.unarchive(ids[0]), { unseen: 0, unread: 1 }); // stays read
    assert.deepEqual(inbox.counts, { unseen: 0, unread: 1 }); // the latest reply's
    const one = await inbox.item(ids[0]);
    assert.deepEqual([one.id, one.title, one.seen, one.read, one.archived], [ids[0], "first", true, true, false]);
    assert.deepEqual(await inbox.readAll(), { unseen: 0, unread: 0, unknown: [] });
    ids.push(await dev.notify({ user_id: user, type: "comment_added", title: "fourth", channels: ["in_app"] }));
    await until(() => items.length === 4, "live item fourth");
    assert.deepEqual(await inbox.seenAll(), { unseen: 0, unread: 1, unknown: [] });
    assert.deepEqual(await inbox.archiveAll(), { unseen: 0, unread: 0, unknown: [] });
    assert.deepEqual((await inbox.page()).items, []);
    await inbox.unarchiveAll();
    assert.deepEqual((await inbox.page()).items.map((i) => i.id), [...ids].reverse());

    // Each change was pushed once, in order; unarchiving a read item changed no count.
    const expected = [
      { unseen: 2, unread: 3 },
      { unseen: 0, unread: 3 },
      { unseen: 0, unread: 2 },
      { unseen: 0, unread: 1 },
      { unseen: 0, unread: 0 },
      { unseen: 1, unread: 1 }, // the fourth arrives
      { unseen: 0, unread: 1 },
      { unseen: 0, unread: 0 },
    ];
    await until(() => counts.length >= before + expected.length, "the pushed counts");
    assert.deepEqual(counts.slice(before), expected);

    // Refusals carry the API's code.
    const missing = await rejection(inbox.item("not-there"));
    assert.ok(missing instanceof InboxError);
    assert.deepEqual([missing.code, missing.status], ["not_found", 404]);
    assert.equal((await rejection(inbox.page({ cursor: "bogus" }))).code, "bad_cursor");
    const invalid = await rejection(inbox.page({ limit: 0 }));
    assert.deepEqual([invalid.code, invalid.status], ["validation_error", 422]);
    const other = new ArchMeshInbox({ user: "someone-else", baseUrl: dev.http, token: good });
    assert.equal((await rejection(other.page())).code, "forbidden");
    const refused = new ArchMeshInbox({ user, baseUrl: dev.http, token: stale });
    assert.deepEqual(
      [(await rejection(refused.page())).status],
      [401], // a fixed token is not retried
    );
    // A backend uses the API key.
    const backend = new ArchMeshInbox({ user, baseUrl: dev.http, token: API_KEY });
    assert.deepEqual(
      (await backend.page()).items.map((i) => i.id),
      [...ids].reverse(),
    );
    stop();
  } finally {
    await inbox.close();
    await client.close();
  }
});
