// Load generator and publisher for `make bench`: many WebSocket clients (Node's `ws`) in one
// process, plus the publisher, so that every message carries this process's clock and a
// sequence number. Prints one JSON result line on stdout.
//
//   node bench/loadgen.mjs --system S --scenario X --port P --redis URL --pid SERVER_PID
//
// Systems: archmesh, socketio (Node), pysocketio (python-socketio), broadcaster.
// Scenarios: fanout, latency, unicast, idle, capacity, storm, storm3 (three gateways, nginx).
import { createRequire } from "node:module";
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import net from "node:net";
import path from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";

const prefix = process.env.BENCH_NODE_PREFIX;
const require = createRequire(path.join(prefix, "node_modules", "_"));
const WebSocket = require("ws");
const { Redis } = require("ioredis");
const { Emitter } = require("@socket.io/redis-emitter");

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, arg, i, all) => {
    if (arg.startsWith("--")) acc.push([arg.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const SYSTEM = args.system;
const SCENARIO = args.scenario;
const PORT = Number(args.port);
const SERVER_PID = Number(args.pid);
const REDIS_URL = args.redis;
const REDIS_PID = Number(args["redis-pid"] ?? 0);
const JWT_SECRET = process.env.BENCH_JWT_SECRET ?? "";

const SCENARIOS = {
  fanout: { clients: 1000, messages: 2000, window: 100, cap: 15 },
  latency: { clients: 1000, rate: 20, seconds: 10 },
  unicast: { clients: 1000, messages: 20000, window: 1000, cap: 15 },
  idle: { clients: 5000 },
  // clients 0: as many as the open-files limits of the server and of this process allow,
  // less `margin` (both processes need a few descriptors of their own).
  capacity: { clients: 0, margin: 1000, messages: 20, rate: 4, unicast_rate: 5000, unicast_seconds: 5, probes: 10, ping_ms: 50 },
  storm: { clients: 5000, broadcast_rate: 10, unicast_rate: 500, before: 2, after: 1, backoff_base: 500, backoff_cap: 5000 },
  // Three gateways behind nginx: `clients` on the first (10 `session:` channels each), `live`
  // clients on the two others; the first is SIGKILLed. The JS SDK's backoff (500 ms, 20 s).
  storm3: { clients: 10000, live: 1000, sessions: 10, session_rate: 1, unicast_rate: 200, live_rate: 10, before: 10, after: 2, backoff_base: 500, backoff_cap: 20000 },
  notifier: { clients: 1000, messages: 20000, batch: 100, window: 5000, cap: 20 },
};
const conf = { ...SCENARIOS[SCENARIO] };
for (const key of Object.keys(conf)) if (args[key] !== undefined) conf[key] = Number(args[key]);

const now = () => performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const FANOUT = { archmesh: "broadcast", broadcaster: "bench" };
const userChannel = (i) => (SYSTEM === "archmesh" || SYSTEM === "broadcaster" ? `user:u${i}` : `u${i}`);
const fanoutChannel = () => FANOUT[SYSTEM] ?? "bench";

// -- tokens (HS256, what the gateway verifies) -------------------------------------------------

const b64url = (value) => Buffer.from(value).toString("base64url");
function token(user, sessions) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub: user, exp: Math.floor(Date.now() / 1000) + 3600 };
  if (sessions) claims.sessions = sessions;
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", JWT_SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// -- publisher -------------------------------------------------------------------------------
// Each system's own publishing path decides the bytes (publish.lua via EVALSHA, the Socket.IO
// emitter's msgpack, python-socketio's JSON envelope, a plain PUBLISH). They are encoded before
// the clock starts, with a fixed-width timestamp placeholder that is overwritten right before
// the write, and written raw to Redis (replies discarded): the publisher stays cheap, so it is
// the server that is measured.

const TS_DIGITS = 13;
const TS_MARK = Buffer.from("7".repeat(TS_DIGITS));
const PAD = "x".repeat(120);

function resp(...parts) {
  const chunks = [Buffer.from(`*${parts.length}\r\n`)];
  for (const part of parts) {
    const buf = Buffer.isBuffer(part) ? part : Buffer.from(String(part));
    chunks.push(Buffer.from(`$${buf.length}\r\n`), buf, Buffer.from("\r\n"));
  }
  return Buffer.concat(chunks);
}

class RawRedis {
  constructor(url) {
    const { hostname, port } = new URL(url);
    this.sock = net.connect(Number(port), hostname);
    this.sock.setNoDelay(true);
    this.sock.on("data", () => {});
    this.corked = false;
  }

  write(buf) {
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      process.nextTick(() => {
        this.corked = false;
        this.sock.uncork();
      });
    }
    this.sock.write(buf);
  }
}

const redis = new Redis(REDIS_URL);
const raw = new RawRedis(REDIS_URL);

function eventObject(seq) {
  return { type: "bench", seq, ts: TS_MARK.toString(), pad: PAD };
}

function makeSystem() {
  const base = `ws://127.0.0.1:${PORT}`;
  const socketIo = {
    url: () => `${base}/socket.io/?EIO=4&transport=websocket`,
    open: () => {},
    control(client, text) {
      if (text === "2") client.ws.send("3"); // Engine.IO ping
      else if (text.startsWith("0{")) client.ws.send("40");
      else if (text.startsWith("40")) client.ws.send(`42${JSON.stringify(["join", client.channels])}`);
      else if (text.startsWith('42["joined"')) return true;
      return false;
    },
    // An application-level ping: an `echo` event the server acknowledges (`43<id>[]`).
    ping: (client, id) => client.ws.send(`42${id}["echo"]`),
    pongId: (text) => (text.startsWith("43") ? Number.parseInt(text.slice(2), 10) : undefined),
  };
  if (SYSTEM === "archmesh") {
    const script = readFileSync(new URL("../clients/python/src/archmesh_client/publish.lua", import.meta.url), "utf8");
    let sha = null;
    return {
      url: () => `${base}/ws`,
      open(client) {
        const extra = client.channels.filter((c) => !c.startsWith("user:"));
        client.ws.send(JSON.stringify({ type: "connect", token: token(`u${client.index}`), subscribe: extra }));
        client.pending = 1 + extra.length;
      },
      control(client, text) {
        if (text.startsWith('{"type":"connected"') || text.startsWith('{"type":"subscribed"')) {
          client.pending -= 1;
          return client.pending === 0;
        }
        if (text.startsWith('{"type":"error"') || text.startsWith('{"type":"disconnect"')) {
          throw new Error(`archmesh client ${client.index}: ${text}`);
        }
        return false;
      },
      ping: (client, id) => client.ws.send(`{"type":"ping","id":${id}}`),
      pongId: (text) => (text.startsWith('{"type":"pong"') ? JSON.parse(text).id : undefined),
      async prepare() {
        sha = await redis.script("LOAD", script);
      },
      encode: (channel, seq) =>
        resp("EVALSHA", sha, 2, `rt:{${channel}}:meta`, `rt:{${channel}}:history`,
          JSON.stringify(eventObject(seq)), 1000, 3600000),
    };
  }
  if (SYSTEM === "socketio") {
    let captured = null;
    const emitter = new Emitter({ publish: (channel, msg) => (captured = resp("PUBLISH", channel, msg)) });
    return {
      ...socketIo,
      encode(channel, seq) {
        emitter.to(channel).emit("m", eventObject(seq));
        return captured;
      },
    };
  }
  if (SYSTEM === "pysocketio") {
    return {
      ...socketIo,
      encode(channel, seq) {
        const message = {
          method: "emit", event: "m", data: [eventObject(seq)], binary: false, namespace: "/",
          room: channel, skip_sid: null, callback: null, host_id: "bench-publisher",
        };
        return resp("PUBLISH", "socketio", JSON.stringify(message));
      },
    };
  }
  if (SYSTEM === "blast") {
    return {
      url: () => `${base}/ws`,
      open: () => {},
      control: (_client, text) => text === "ready",
      encode: (channel, seq) => resp("PUBLISH", channel, JSON.stringify(eventObject(seq))),
    };
  }
  if (SYSTEM === "broadcaster") {
    return {
      url: (client) => `${base}/ws?channel=${encodeURIComponent(client.channels[0])}`,
      open: () => {},
      control: (_client, text) => text === "ready",
      encode: (channel, seq) => resp("PUBLISH", channel, JSON.stringify(eventObject(seq))),
    };
  }
  throw new Error(`unknown system ${SYSTEM}`);
}

const system = makeSystem();

// One message ready to go: its bytes and where the timestamp digits sit.
function prepared(channel, seq) {
  const buf = system.encode(channel, seq);
  return { buf, at: buf.indexOf(TS_MARK) };
}

function send(message) {
  let value = Math.round(now() * 1000);
  const { buf, at } = message;
  for (let i = at + TS_DIGITS - 1; i >= at; i -= 1) {
    buf[i] = 48 + (value % 10);
    value = Math.floor(value / 10);
  }
  raw.write(buf);
}

// -- clients ---------------------------------------------------------------------------------

const SEQ = Buffer.from('"seq":');
const TS = Buffer.from('"ts":');

function intAt(buf, at) {
  let i = at;
  while (buf[i] === 32 || buf[i] === 34) i += 1; // a space or a quote before the digits
  let sign = 1;
  if (buf[i] === 45) {
    sign = -1;
    i += 1;
  }
  let value = 0;
  for (; buf[i] >= 48 && buf[i] <= 57; i += 1) value = value * 10 + (buf[i] - 48);
  return sign * value;
}

let onDelivery = () => {};
let onPong = () => {};
const clients = [];

function connect(index, channels, localAddress) {
  return new Promise((resolve, reject) => {
    const client = { index, channels, ready: false, ws: null, pending: 0 };
    const options = { perMessageDeflate: false, skipUTF8Validation: true };
    if (localAddress) options.localAddress = localAddress;
    const ws = new WebSocket(system.url(client), options);
    client.ws = ws;
    const timer = setTimeout(() => reject(new Error(`client ${index}: not ready after 60 s`)), 60000);
    ws.on("open", () => system.open(client));
    ws.on("error", (err) => reject(err));
    ws.on("close", (code) => {
      if (!client.ready) reject(new Error(`client ${index}: closed ${code} before ready`));
      client.closed = code;
    });
    ws.on("message", (buf) => {
      const at = buf.indexOf(SEQ);
      if (at >= 0) {
        const seq = intAt(buf, at + SEQ.length);
        const ts = intAt(buf, buf.indexOf(TS, at) + TS.length);
        onDelivery(client, seq, ts);
        return;
      }
      const text = buf.toString();
      if (client.ready && system.pongId) {
        const id = system.pongId(text);
        if (id !== undefined) {
          onPong(client, id);
          return;
        }
      }
      if (system.control(client, text) && !client.ready) {
        client.ready = true;
        clearTimeout(timer);
        resolve(client);
      }
    });
  });
}

// `spread`: each client from its own loopback address. Linux gives connect() the even half of
// the ephemeral ports first: past about 14,000 sockets from one address to one port every
// connect() searched the odd half, and the load generator's kernel time, not the server, set
// the connect rate (measured: 1,300/s before, 400-600/s after 14,000, the server idling).
async function connectAll(count, channelsOf, concurrency = 200, spread = false) {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next++;
      clients[index] = await connect(index, channelsOf(index), spread ? sourceAddress(index) : undefined);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

// -- measurement -----------------------------------------------------------------------------

function cpuSeconds(pid) {
  if (!pid) return 0;
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in ticks of 10 ms
}

function serverRssKb() {
  const status = readFileSync(`/proc/${SERVER_PID}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

class Tally {
  // Deliveries of messages 0..messages-1 to `clients` clients, each expected exactly once by the
  // clients `expected(seq)` names (all of them when undefined).
  constructor(nClients, messages, perMessage) {
    this.n = nClients;
    this.messages = messages;
    this.perMessage = perMessage;
    this.seen = new Uint8Array(nClients * messages);
    this.count = new Uint32Array(messages);
    this.latency = new Float64Array(messages * perMessage);
    this.deliveries = 0;
    this.duplicates = 0;
    this.stray = 0;
    this.completed = 0;
    this.last = 0;
  }

  record(client, seq, ts) {
    const t = now();
    if (seq < 0 || seq >= this.messages) return false;
    const slot = client.index * this.messages + seq;
    if (this.seen[slot]) {
      this.duplicates += 1;
      return false;
    }
    this.seen[slot] = 1;
    this.latency[this.deliveries] = t - ts / 1000;
    this.deliveries += 1;
    this.last = t;
    this.count[seq] += 1;
    if (this.count[seq] === this.perMessage) this.completed += 1;
    return true;
  }

  summary(published, start) {
    const lat = this.latency.slice(0, this.deliveries).sort();
    const elapsed = (this.last - start) / 1000;
    const expected = published * this.perMessage;
    return {
      published,
      expected,
      deliveries: this.deliveries,
      lost: expected - this.deliveries,
      duplicates: this.duplicates,
      seconds: round(elapsed, 3),
      rate: round(this.deliveries / elapsed, 0),
      p50_ms: round(percentile(lat, 50), 3),
      p99_ms: round(percentile(lat, 99), 3),
      max_ms: round(lat.length ? lat[lat.length - 1] : null, 3),
    };
  }
}

const round = (v, digits) => (v === null || Number.isNaN(v) ? null : Number(v.toFixed(digits)));

// Publishes warm-up messages (negative seq) until `client` gets one: the whole path is live.
async function warmUp(channel, client, timeoutMs = 15000) {
  let got = false;
  const previous = onDelivery;
  onDelivery = (c, seq) => {
    if (c === client && seq < 0) got = true;
  };
  const deadline = now() + timeoutMs;
  for (let seq = -1; !got; seq -= 1) {
    if (now() > deadline) throw new Error(`warm-up: nothing arrived on ${channel}`);
    send(prepared(channel, seq));
    await sleep(100);
  }
  await sleep(300); // let the other clients' warm-up copies drain
  onDelivery = previous;
}

// Runs `body` and measures the CPU both processes used meanwhile.
async function measured(body) {
  const cpu0 = process.cpuUsage();
  const srv0 = cpuSeconds(SERVER_PID);
  const redis0 = cpuSeconds(REDIS_PID);
  const t0 = now();
  const result = await body();
  const wall = (now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  result.loadgen_cpu = round((cpu.user + cpu.system) / 1e6 / wall, 2);
  const serverCpu = cpuSeconds(SERVER_PID) - srv0;
  result.server_cpu = round(serverCpu / wall, 2);
  // Deliveries per second of server CPU: steadier than `rate` on a busy shared machine.
  if (result.deliveries) result.per_cpu_second = round(result.deliveries / serverCpu, 0);
  result.redis_cpu = round((cpuSeconds(REDIS_PID) - redis0) / wall, 2);
  return result;
}

// Publishes `messages` as fast as the system takes them: at most `window` incomplete at once.
function windowed(tally, batch, window, capSeconds) {
  const messages = batch.length;
  return new Promise((resolve) => {
    let published = 0;
    let lastProgress = now();
    let progress = -1;
    const start = now();
    const pump = () => {
      while (published < messages && published - tally.completed < window) {
        if ((now() - start) / 1000 > capSeconds) break;
        send(batch[published]);
        published += 1;
      }
    };
    onDelivery = (client, seq, ts) => {
      if (tally.record(client, seq, ts)) pump();
    };
    pump();
    const check = setInterval(() => {
      if (tally.deliveries !== progress) {
        progress = tally.deliveries;
        lastProgress = now();
      }
      const done = tally.completed >= published && (published >= messages || (now() - start) / 1000 > capSeconds);
      if (done || now() - lastProgress > 3000) {
        clearInterval(check);
        resolve({ published, start });
      }
    }, 20);
  });
}

// Publishes at a fixed rate, then waits (at most 5 s) for the stragglers.
function paced(tally, batch, rate) {
  const count = batch.length;
  return new Promise((resolve) => {
    onDelivery = (client, seq, ts) => tally.record(client, seq, ts);
    const start = now();
    let published = 0;
    const tick = () => {
      const due = Math.min(count, Math.floor(((now() - start) / 1000) * rate) + 1);
      while (published < due) {
        send(batch[published]);
        published += 1;
      }
      if (published < count) {
        setTimeout(tick, Math.max(0, start + (published * 1000) / rate - now()));
        return;
      }
      const end = now() + 5000;
      const wait = setInterval(() => {
        if (tally.completed >= count || now() > end) {
          clearInterval(wait);
          resolve({ published, start });
        }
      }, 20);
    };
    tick();
  });
}

// A seeded PRNG so every system gets the same sequence of unicast targets.
function targets(n, count) {
  let state = 12345;
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i += 1) {
    state = (Math.imul(state, 1103515245) + 12345) >>> 0;
    out[i] = state % n;
  }
  return out;
}

const batchOf = (count, channelOf) => Array.from({ length: count }, (_, seq) => prepared(channelOf(seq), seq));

async function scenario() {
  if (system.prepare) await system.prepare();
  if (SCENARIO === "fanout" || SCENARIO === "latency") {
    const channel = fanoutChannel();
    await connectAll(conf.clients, () => [channel]);
    await warmUp(channel, clients[0]);
    const batch = batchOf(SCENARIO === "fanout" ? conf.messages : conf.rate * conf.seconds, () => channel);
    return measured(async () => {
      const tally = new Tally(conf.clients, batch.length, conf.clients);
      const run =
        SCENARIO === "fanout"
          ? await windowed(tally, batch, conf.window, conf.cap)
          : await paced(tally, batch, conf.rate);
      return tally.summary(run.published, run.start);
    });
  }
  if (SCENARIO === "unicast") {
    await connectAll(conf.clients, (i) => [userChannel(i)]);
    await warmUp(userChannel(0), clients[0]);
    const to = targets(conf.clients, conf.messages);
    const batch = batchOf(conf.messages, (seq) => userChannel(to[seq]));
    return measured(async () => {
      const tally = new Tally(conf.clients, conf.messages, 1);
      const record = tally.record.bind(tally);
      tally.record = (client, seq, ts) => {
        if (seq >= 0 && seq < conf.messages && to[seq] !== client.index) {
          tally.stray += 1;
          return false;
        }
        return record(client, seq, ts);
      };
      const run = await windowed(tally, batch, conf.window, conf.cap);
      return { ...tally.summary(run.published, run.start), stray: tally.stray };
    });
  }
  if (SCENARIO === "idle") {
    await connectAll(1, (i) => [userChannel(i)]);
    await warmUp(userChannel(0), clients[0]);
    await sleep(500);
    const before = serverRssKb();
    const t0 = now();
    await connectAll(conf.clients, (i) => [userChannel(i)]);
    const connectSeconds = (now() - t0) / 1000;
    await sleep(3000);
    const after = serverRssKb();
    if (args.hold) {
      process.stderr.write(`holding ${conf.clients} connections for ${args.hold} s\n`);
      await sleep(Number(args.hold) * 1000);
    }
    return {
      clients: conf.clients,
      connect_seconds: round(connectSeconds, 2),
      rss_before_kb: before,
      rss_after_kb: after,
      kb_per_conn: round((after - before) / (conf.clients - 1), 2),
    };
  }
  if (SCENARIO === "capacity") return capacityScenario();
  if (SCENARIO === "storm") return stormScenario();
  if (SCENARIO === "storm3") return storm3Scenario();
  if (SCENARIO === "notifier") return notifierScenario();
  throw new Error(`unknown scenario ${SCENARIO}`);
}

// -- capacity: a full process of connections ---------------------------------------------------

// The soft RLIMIT_NOFILE of a process, as /proc shows it.
function openFilesLimit(pid) {
  const limits = readFileSync(`/proc/${pid}/limits`, "utf8");
  return Number(/Max open files\s+(\d+)/.exec(limits)[1]);
}

// Unicast deliveries: each message has exactly one addressee, so one flag per message (a
// clients x messages table would not fit at 19,000 clients).
class UnicastTally extends Tally {
  constructor(messages, to) {
    super(1, messages, 1);
    this.to = to;
  }

  record(client, seq, ts) {
    if (seq < 0 || seq >= this.messages) return false;
    if (this.to[seq] !== client.index) {
      this.stray += 1;
      return false;
    }
    return super.record({ index: 0 }, seq, ts);
  }
}

// Application-level pings from `probes` clients every `everyMs` while `body` runs: the round
// trip p50/p99/max of frames the server must answer itself (the Socket.IO peer acknowledges an
// `echo` event), so a loop busy with delivery shows.
async function withPings(probes, everyMs, body) {
  const sent = new Map();
  const rtt = [];
  let nextId = 1;
  onPong = (_client, id) => {
    const t = sent.get(id);
    if (t === undefined) return;
    sent.delete(id);
    rtt.push(now() - t);
  };
  const timer = setInterval(() => {
    for (const client of probes) {
      const id = nextId++;
      sent.set(id, now());
      system.ping(client, id);
    }
  }, everyMs);
  try {
    return await body();
  } finally {
    clearInterval(timer);
    const end = now() + 2000;
    while (sent.size > 0 && now() < end) await sleep(20);
    onPong = () => {};
    rtt.sort((a, b) => a - b);
    withPings.last = {
      pings: rtt.length + sent.size,
      unanswered: sent.size,
      p50_ms: round(percentile(rtt, 50), 3),
      p99_ms: round(percentile(rtt, 99), 3),
      max_ms: round(rtt.length ? rtt[rtt.length - 1] : null, 3),
    };
  }
}

async function capacityScenario() {
  // As many clients as both processes' open-files limits allow, less a margin; each on its own
  // user channel and on the shared one.
  const serverLimit = openFilesLimit(SERVER_PID);
  const ownLimit = openFilesLimit(process.pid);
  const n = conf.clients || Math.min(serverLimit, ownLimit) - conf.margin;
  const shared = fanoutChannel();
  const memory0 = serverRssKb();
  const cpu0 = process.cpuUsage();
  const srv0 = cpuSeconds(SERVER_PID);
  const t0 = now();
  await connectAll(n, (i) => [userChannel(i), shared], 200, true);
  const connectSeconds = (now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const connectServerCpu = (cpuSeconds(SERVER_PID) - srv0) / connectSeconds;
  const connectLoadgenCpu = (cpu.user + cpu.system) / 1e6 / connectSeconds;
  await sleep(2000);
  const memory1 = serverRssKb();
  await warmUp(shared, clients[0]);
  // Fan-out: a broadcast to every client, paced (not saturated): its latency.
  const fan = new Tally(n, conf.messages, n);
  const fanRun = await paced(fan, batchOf(conf.messages, () => shared), conf.rate);
  // Unicast at a steady rate to random users while pings are timed.
  const count = conf.unicast_rate * conf.unicast_seconds;
  const to = targets(n, count);
  const uni = new UnicastTally(count, to);
  const uniBatch = batchOf(count, (seq) => userChannel(to[seq]));
  const probes = clients.slice(0, conf.probes);
  const srv1 = cpuSeconds(SERVER_PID);
  const t1 = now();
  const uniRun = await withPings(probes, conf.ping_ms, () => paced(uni, uniBatch, conf.unicast_rate));
  const uniServerCpu = (cpuSeconds(SERVER_PID) - srv1) / ((now() - t1) / 1000);
  const ping = withPings.last;
  return {
    clients: n,
    open_files_limit: { server: serverLimit, loadgen: ownLimit },
    connect_seconds: round(connectSeconds, 2),
    connects_per_second: round(n / connectSeconds, 0),
    connect_server_cpu: round(connectServerCpu, 2),
    connect_loadgen_cpu: round(connectLoadgenCpu, 2),
    connect_limited_by: connectServerCpu >= connectLoadgenCpu ? "server" : "load generator",
    rss_before_kb: memory0,
    rss_after_kb: memory1,
    kb_per_conn: round((memory1 - memory0) / n, 2),
    fanout: fan.summary(fanRun.published, fanRun.start),
    unicast: { ...uni.summary(uniRun.published, uniRun.start), stray: uni.stray, rate_target: conf.unicast_rate, server_cpu: round(uniServerCpu, 2) },
    ping: { ...ping, every_ms: conf.ping_ms, probes: probes.length, ok: ping.unanswered === 0 && ping.p99_ms !== null && ping.p99_ms <= 100 },
  };
}

// -- storm: the server is SIGKILLed and restarted under its connected clients ------------------
// The clients reconnect as the SDKs do (capped exponential backoff, full jitter) and resubscribe
// from their last positions (ArchMesh: `since` per channel; Socket.IO: rejoin their rooms; its
// connection state recovery needs the in-memory or a streams adapter and the same process,
// neither of which survives a restart with the redis-adapter). Publications go on throughout.

const BASE_UNICAST = 1000000;

const PUBLICATION = Buffer.from('{"type":"publication","channel":"');
const OFFSET = Buffer.from('"offset":');
const EPOCH = Buffer.from('"epoch":"');

class StormClient {
  constructor(index, channels, onReady) {
    this.index = index;
    this.channels = channels;
    this.onReady = onReady;
    this.positions = new Map(); // channel -> { offset, epoch }
    this.ready = false;
    this.readyAt = 0;
    this.attempt = 0;
    this.failures = 0;
    this.connects = 0;
    this.notRecovered = 0;
    this.pending = 0;
    this.stopped = false;
    this.steered = 0;
  }

  open() {
    const options = { perMessageDeflate: false, skipUTF8Validation: true };
    // storm3: one source address per client (nginx limits handshakes and sockets per address).
    if (this.localAddress) options.localAddress = this.localAddress;
    const ws = new WebSocket(this.url ? this.url() : system.url(this), options);
    this.ws = ws;
    let opened = false;
    ws.on("open", () => {
      opened = true;
      this.connects += 1;
      stormOpened(this);
      this.hello();
    });
    ws.on("error", () => {});
    ws.on("close", () => {
      if (!opened) this.failures += 1;
      const wasReady = this.ready;
      this.ready = false;
      if (this.stopped) return;
      if (wasReady) this.attempt = 0;
      const cap = Math.min(conf.backoff_cap, conf.backoff_base * 2 ** this.attempt);
      this.attempt += 1;
      setTimeout(() => this.open(), Math.random() * cap);
    });
    ws.on("message", (buf) => this.message(buf));
  }

  hello() {
    if (SYSTEM !== "archmesh") return; // Socket.IO: the handshake starts with the server's `0{`
    const since = (channel) => this.positions.get(channel);
    const own = this.channels[0];
    const extra = this.channels.slice(1).map((channel) => (since(channel) ? { channel, since: since(channel) } : channel));
    const frame = { type: "connect", token: token(this.user ?? `u${this.index}`, this.sessions), subscribe: extra };
    if (since(own)) frame.since = since(own);
    this.pending = this.channels.length;
    this.ws.send(JSON.stringify(frame));
  }

  keep(channel, offset, epoch) {
    const at = this.positions.get(channel);
    if (!at || at.epoch !== epoch || offset > at.offset) this.positions.set(channel, { offset, epoch });
  }

  message(buf) {
    if (SYSTEM !== "archmesh") {
      const at = buf.indexOf(SEQ);
      if (at >= 0) {
        onDelivery(this, intAt(buf, at + SEQ.length), intAt(buf, buf.indexOf(TS, at) + TS.length));
      } else if (system.control(this, buf.toString())) this.ready_();
      return;
    }
    if (buf.compare(PUBLICATION, 0, PUBLICATION.length, 0, PUBLICATION.length) === 0) {
      // The gateway's publication frame has one fixed layout (gateway/protocol.py): scanned,
      // not parsed, so that the load generator stays cheap next to the storm's deliveries.
      const end = buf.indexOf(34, PUBLICATION.length); // the channel's closing quote
      const channel = buf.toString("latin1", PUBLICATION.length, end);
      const at = buf.indexOf(OFFSET, end);
      if (at >= 0) {
        const e = buf.indexOf(EPOCH, at) + EPOCH.length;
        this.keep(channel, intAt(buf, at + OFFSET.length), buf.toString("latin1", e, buf.indexOf(34, e)));
      }
      const s = buf.indexOf(SEQ, end);
      onDelivery(this, intAt(buf, s + SEQ.length), intAt(buf, buf.indexOf(TS, s) + TS.length));
      return;
    }
    const frame = JSON.parse(buf.toString());
    if (frame.type === "connected" && this.avoid !== undefined && frame.node === this.avoid) {
      this.steered += 1; // storm3: a live client placed on the node to be killed tries again
      this.attempt = 0;
      this.ws.close();
      return;
    }
    if (frame.type === "connected") this.node = frame.node;
    if (frame.type === "connected" || frame.type === "subscribed") {
      const channel = frame.type === "connected" ? this.channels[0] : frame.channel;
      if (frame.recovered === false) this.notRecovered += 1;
      this.keep(channel, frame.offset, frame.epoch);
      this.pending -= 1;
      if (this.pending === 0) this.ready_();
      return;
    }
    if (frame.type === "error" || frame.type === "disconnect") stormErrors.push(`client ${this.index}: ${buf}`);
  }

  ready_() {
    this.ready = true;
    this.readyAt = now();
    this.onReady(this);
  }
}

const stormErrors = [];
let stormOpened = () => {};

// Reads the new server's pid from run.py (stdin) after asking it for a restart (stdout).
async function restartServer() {
  const lines = createInterface({ input: process.stdin });
  process.stdout.write(`${JSON.stringify({ restart: true })}\n`);
  for await (const line of lines) {
    lines.close();
    return JSON.parse(line).pid;
  }
  throw new Error("no new server pid on stdin");
}

async function stormScenario() {
  const n = conf.clients;
  const shared = fanoutChannel();
  let readyCount = 0;
  let firstBack = 0;
  let killedAt = Infinity;
  const onReady = (client) => {
    readyCount += 1;
    if (client.readyAt > killedAt && !firstBack) firstBack = client.readyAt;
  };
  // Connect all, 200 at a time (their first connect is not the storm).
  const storm = Array.from({ length: n }, (_, i) => new StormClient(i, [userChannel(i), shared], onReady));
  for (let i = 0; i < n; i += 200) {
    const goal = Math.min(n, i + 200);
    storm.slice(i, goal).forEach((c) => c.open());
    const deadline = now() + 60000;
    while (readyCount < goal) {
      if (now() > deadline) throw new Error(`storm: ${readyCount} of ${goal} clients ready after 60 s`);
      await sleep(5);
    }
  }
  clients.push(...storm); // closed at exit like the others
  await warmUp(shared, storm[0]);
  // Publications throughout: broadcasts to all, unicasts to random users, numbered apart.
  const bcast = [];
  const uni = [];
  // At most 150 s of broadcasts are tracked (the storm is over long before).
  const maxBroadcasts = Math.ceil(conf.broadcast_rate * 150);
  const fanTally = new Tally(n, maxBroadcasts, n);
  const uniTo = targets(n, 1000000);
  const uniSeen = new Uint8Array(10000000);
  let uniDeliveries = 0;
  let uniDuplicates = 0;
  let uniStray = 0;
  onDelivery = (client, seq, ts) => {
    if (seq >= BASE_UNICAST) {
      const j = seq - BASE_UNICAST;
      if (uniTo[j] !== client.index) uniStray += 1;
      else if (uniSeen[j]) uniDuplicates += 1;
      else {
        uniSeen[j] = 1;
        uniDeliveries += 1;
      }
    } else if (seq >= 0) fanTally.record(client, seq, ts);
  };
  let publishing = true;
  const pubStart = now();
  const publisher = (async () => {
    let b = 0;
    let u = 0;
    while (publishing) {
      const elapsed = (now() - pubStart) / 1000;
      while (b < Math.min(maxBroadcasts, Math.floor(elapsed * conf.broadcast_rate) + 1)) {
        send(prepared(shared, b));
        bcast.push(now());
        b += 1;
      }
      while (u < Math.floor(elapsed * conf.unicast_rate) + 1) {
        send(prepared(userChannel(uniTo[u]), BASE_UNICAST + u));
        uni.push(now());
        u += 1;
      }
      await sleep(5);
    }
  })();
  await sleep(conf.before * 1000);
  // The restart: every client is connected and positioned.
  // Two storms in a row: every socket dropped at once by the clients' side with the server up
  // (they all come back within the first backoff step: the server's own rate), then the server
  // SIGKILLed and restarted (every client's backoff grows while nothing listens).
  let pid = SERVER_PID;
  const phase = async (kind) => {
    readyCount = 0;
    firstBack = 0;
    let firstOpen = 0;
    let opens = 0;
    stormOpened = () => {
      opens += 1;
      if (!firstOpen) firstOpen = now();
    };
    const failures0 = storm.reduce((a, c) => a + c.failures, 0);
    const notRecovered0 = storm.reduce((a, c) => a + c.notRecovered, 0);
    const redis0 = cpuSeconds(REDIS_PID);
    killedAt = now();
    let cpu0 = 0;
    if (kind === "kill") pid = await restartServer();
    else {
      process.stderr.write(`storm: dropping all clients of ${pid}\n`);
      cpu0 = cpuSeconds(pid);
      for (const c of storm) c.ws.terminate();
    }
    const startedAt = now();
    const deadline = now() + 120000;
    while (readyCount < n || storm.some((c) => !c.ready)) {
      if (now() > deadline) break;
      await sleep(5);
    }
    const allBack = now();
    const serverCpu = (cpuSeconds(pid) - cpu0) / ((allBack - startedAt) / 1000);
    const redisCpu = (cpuSeconds(REDIS_PID) - redis0) / ((allBack - killedAt) / 1000);
    const during = (times) => times.filter((t) => t >= killedAt && t <= allBack).length;
    return {
      reconnected: storm.filter((c) => c.ready).length,
      seconds_to_all: round((allBack - killedAt) / 1000, 2),
      seconds_to_first_open: firstOpen ? round((firstOpen - killedAt) / 1000, 2) : null,
      opens,
      seconds_to_first_back: firstBack ? round((firstBack - killedAt) / 1000, 2) : null,
      seconds_first_back_to_all: firstBack ? round((allBack - firstBack) / 1000, 2) : null,
      reconnects_per_second: firstBack ? round(n / ((allBack - firstBack) / 1000), 0) : null,
      refused_attempts: storm.reduce((a, c) => a + c.failures, 0) - failures0,
      not_recovered: SYSTEM === "archmesh" ? storm.reduce((a, c) => a + c.notRecovered, 0) - notRecovered0 : null,
      // A server short of its core limits the storm; otherwise the clients' backoff spread it.
      server_cpu: round(serverCpu, 2),
      redis_cpu: round(redisCpu, 2),
      limited_by: serverCpu >= 0.9 ? "server" : "client backoff",
      published_during: during(bcast) + during(uni),
    };
  };
  const drop = await phase("drop");
  await sleep(1000);
  const kill = await phase("kill");
  await sleep(conf.after * 1000);
  publishing = false;
  await publisher;
  const wait = now() + 5000;
  while ((fanTally.deliveries < bcast.length * n || uniDeliveries < uni.length) && now() < wait) await sleep(20);
  for (const c of storm) c.stopped = true;
  const expected = bcast.length * n + uni.length;
  const received = fanTally.deliveries + uniDeliveries;
  return {
    clients: n,
    recovery: SYSTEM === "archmesh" ? "since, per channel" : "none (rooms joined again)",
    kill,
    drop,
    published: { broadcast: bcast.length, unicast: uni.length },
    expected,
    deliveries: received,
    lost: expected - received,
    duplicates: fanTally.duplicates + uniDuplicates,
    stray: uniStray,
    errors: stormErrors.slice(0, 5),
  };
}

// -- storm3: three gateways behind nginx, the one holding the storm's clients SIGKILLed --------
// `clients` SDK-like clients connect straight to the first gateway (where a balancer would
// have placed them over time), each on its own `user:` channel and on `sessions` shared
// `session:` channels; `live` clients connect through nginx and stay on the two others (a
// client nginx placed on the first reconnects). Publications go on throughout: the session
// channels in turn, unicasts to the storm's users, and the live clients' own channel. The first
// gateway is SIGKILLed; its clients reconnect through nginx with `since` on every channel.
// Each client has its own source address (127.x.y.z), as real users have: nginx limits
// handshakes and sockets per address.

const BASE_LIVE = 5000000;

function sourceAddress(k) {
  return `127.${10 + (k >> 16)}.${(k >> 8) & 255}.${k & 255}`;
}

function gatewaysArg() {
  return String(args.gateways).split(",").map((item) => {
    const [node, port, pid] = item.split(":");
    return { node, port: Number(port), pid: Number(pid) };
  });
}

async function nodeMetrics(port) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const value = (pattern) => {
    const match = new RegExp(`^${pattern} (\\S+)$`, "m").exec(text);
    return match ? Number(match[1]) : 0;
  };
  return {
    issued: value('archmesh_history_reads_total\\{outcome="issued"\\}'),
    merged: value('archmesh_history_reads_total\\{outcome="merged"\\}'),
    recovered: value('archmesh_recoveries_total\\{outcome="recovered"\\}'),
  };
}

async function evalshaCalls() {
  const info = await redis.info("commandstats");
  const match = /cmdstat_evalsha:calls=(\d+)/.exec(info);
  return match ? Number(match[1]) : 0;
}

function childPids(pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function cpuOf(pids) {
  return pids.reduce((sum, pid) => {
    try {
      return sum + cpuSeconds(pid);
    } catch {
      return sum; // gone (the killed node)
    }
  }, 0);
}

async function waitReady(list, goal, seconds, what) {
  const deadline = now() + seconds * 1000;
  while (list.filter((c) => c.ready).length < goal) {
    if (now() > deadline) throw new Error(`storm3: ${list.filter((c) => c.ready).length} of ${goal} ${what} ready after ${seconds} s`);
    await sleep(10);
  }
}

async function storm3Scenario() {
  const n = conf.clients;
  const nodes = gatewaysArg();
  const [victim, ...survivors] = nodes;
  const sessions = Array.from({ length: conf.sessions }, (_, s) => `s${s}`);
  const balancer = `ws://127.0.0.1:${PORT}/ws`;
  const pinned = `ws://127.0.0.1:${args["pinned-port"]}/ws`;
  let readyCount = 0;
  const onReady = () => (readyCount += 1);
  const storm = Array.from({ length: n }, (_, i) => {
    const c = new StormClient(i, [userChannel(i), ...sessions.map((s) => `session:${s}`)], onReady);
    c.sessions = sessions;
    c.localAddress = sourceAddress(i);
    c.url = () => pinned; // the first gateway while it lives, then the others (nginx's backups)
    return c;
  });
  const live = Array.from({ length: conf.live }, (_, i) => {
    const c = new StormClient(i, [`user:l${i}`, "session:live"], () => {});
    c.user = `l${i}`;
    c.sessions = ["live"];
    c.kind = "live";
    c.avoid = victim.node;
    c.localAddress = sourceAddress(n + i);
    c.url = () => balancer;
    return c;
  });
  const t0 = now();
  for (let i = 0; i < n; i += 200) {
    storm.slice(i, Math.min(n, i + 200)).forEach((c) => c.open());
    await waitReady(storm, Math.min(n, i + 200), 60, "storm clients");
  }
  const connectSeconds = (now() - t0) / 1000;
  for (let i = 0; i < live.length; i += 100) {
    live.slice(i, i + 100).forEach((c) => c.open());
    await waitReady(live, Math.min(live.length, i + 100), 60, "live clients");
  }
  clients.push(...storm, ...live); // closed at exit like the others
  await warmUp("session:s0", storm[0]);
  await warmUp("session:live", live[0]);

  // At most 150 s of publications are tracked (the storm is over long before).
  const maxSession = Math.ceil(conf.session_rate * 150);
  const maxLive = Math.ceil(conf.live_rate * 150);
  const sessionTally = new Tally(n, maxSession, n);
  const liveTally = new Tally(live.length, maxLive, live.length);
  const liveAt = new Float64Array(maxLive * live.length); // receipt time of each live delivery
  const liveLatency = new Float64Array(maxLive * live.length);
  let liveCount = 0;
  const uniTo = targets(n, 1000000);
  const uniSeen = new Uint8Array(1000000);
  let uniDeliveries = 0;
  let uniDuplicates = 0;
  let uniStray = 0;
  onDelivery = (client, seq, ts) => {
    if (client.kind === "live") {
      if (seq >= BASE_LIVE && liveTally.record(client, seq - BASE_LIVE, ts)) {
        liveAt[liveCount] = now();
        liveLatency[liveCount] = now() - ts / 1000;
        liveCount += 1;
      }
    } else if (seq >= BASE_UNICAST) {
      const j = seq - BASE_UNICAST;
      if (uniTo[j] !== client.index) uniStray += 1;
      else if (uniSeen[j]) uniDuplicates += 1;
      else {
        uniSeen[j] = 1;
        uniDeliveries += 1;
      }
    } else if (seq >= 0) sessionTally.record(client, seq, ts);
  };
  let publishing = true;
  const published = { session: 0, unicast: 0, live: 0 };
  const pubStart = now();
  const publisher = (async () => {
    while (publishing) {
      const elapsed = (now() - pubStart) / 1000;
      while (published.session < Math.min(maxSession, Math.floor(elapsed * conf.session_rate) + 1)) {
        const b = published.session++;
        send(prepared(`session:${sessions[b % sessions.length]}`, b));
      }
      while (published.unicast < Math.floor(elapsed * conf.unicast_rate) + 1) {
        const u = published.unicast++;
        send(prepared(userChannel(uniTo[u]), BASE_UNICAST + u));
      }
      while (published.live < Math.min(maxLive, Math.floor(elapsed * conf.live_rate) + 1)) {
        send(prepared("session:live", BASE_LIVE + published.live++));
      }
      await sleep(5);
    }
  })();
  const nginxPids = [Number(args["nginx-pid"]), ...childPids(Number(args["nginx-pid"]))];
  // The CPU of each part over the calm window (from 1 s in until the kill), as for the storm.
  await sleep(1000);
  const calmAt = now();
  const calmOwn0 = process.cpuUsage();
  const calm0 = { gateways: cpuOf(nodes.map((g) => g.pid)), nginx: cpuOf(nginxPids), redis: cpuSeconds(REDIS_PID) };
  await sleep(conf.before * 1000 - 1000);
  const calmSeconds = (now() - calmAt) / 1000;
  const calmOwn = process.cpuUsage(calmOwn0);
  const calm1 = { gateways: cpuOf(nodes.map((g) => g.pid)), nginx: cpuOf(nginxPids), redis: cpuSeconds(REDIS_PID) };
  const calmCpu = (key) => round((calm1[key] - calm0[key]) / calmSeconds, 2);

  // The storm: SIGKILL the node of the storm's clients; they reconnect through nginx.
  const reads0 = await Promise.all(survivors.map((g) => nodeMetrics(g.port)));
  const evalsha0 = await evalshaCalls();
  const published0 = { ...published };
  const own0 = process.cpuUsage();
  const cpu0 = { gateways: cpuOf(survivors.map((g) => g.pid)), nginx: cpuOf(nginxPids), redis: cpuSeconds(REDIS_PID) };
  const failures0 = storm.reduce((a, c) => a + c.failures, 0);
  readyCount = 0;
  const killedAt = now();
  process.kill(victim.pid, "SIGKILL");
  const deadline = now() + 180000;
  while (storm.some((c) => !c.ready || c.readyAt < killedAt)) {
    if (now() > deadline) break;
    await sleep(5);
  }
  const allBack = now();
  const back = storm.filter((c) => c.ready && c.readyAt >= killedAt);
  const backAt = back.map((c) => c.readyAt).sort((a, b) => a - b);
  const firstBack = backAt[0];
  const backSeconds = (p) => (backAt.length ? round((percentile(backAt, p) - killedAt) / 1000, 2) : null);
  const stormSeconds = (allBack - killedAt) / 1000;
  const own = process.cpuUsage(own0);
  const cpu1 = { gateways: cpuOf(survivors.map((g) => g.pid)), nginx: cpuOf(nginxPids), redis: cpuSeconds(REDIS_PID) };
  const reads1 = await Promise.all(survivors.map((g) => nodeMetrics(g.port)));
  const evalsha1 = await evalshaCalls();
  const publishedDuring = Object.fromEntries(Object.keys(published).map((k) => [k, published[k] - published0[k]]));
  await sleep(conf.after * 1000);
  publishing = false;
  await publisher;
  const wait = now() + 5000;
  const expectedStorm = published.session * n + published.unicast;
  while (
    (sessionTally.deliveries + uniDeliveries < expectedStorm || liveTally.deliveries < published.live * live.length) &&
    now() < wait
  ) await sleep(20);
  for (const c of [...storm, ...live]) c.stopped = true;

  // Live delivery p99 before the kill (from 1 s after publishing began) and from the kill until
  // every storm client was back.
  const window = (from, to) => {
    const values = [];
    for (let k = 0; k < liveCount; k += 1) if (liveAt[k] >= from && liveAt[k] < to) values.push(liveLatency[k]);
    values.sort((a, b) => a - b);
    return { deliveries: values.length, p50_ms: round(percentile(values, 50), 2), p99_ms: round(percentile(values, 99), 2), max_ms: round(values.length ? values[values.length - 1] : null, 2) };
  };
  const calm = window(pubStart + 1000, killedAt);
  const during = window(killedAt, allBack);
  const sum = (list, key) => list.reduce((a, r) => a + r[key], 0);
  const issued = sum(reads1, "issued") - sum(reads0, "issued");
  const merged = sum(reads1, "merged") - sum(reads0, "merged");
  const cpu = (key) => round((cpu1[key] - cpu0[key]) / stormSeconds, 2);
  const received = sessionTally.deliveries + uniDeliveries;
  const p99Ratio = calm.p99_ms && during.p99_ms ? round(during.p99_ms / calm.p99_ms, 2) : null;
  return {
    clients: n,
    live_clients: live.length,
    channels_per_client: 1 + sessions.length,
    nodes: nodes.length,
    connect_seconds: round(connectSeconds, 2),
    live_steered: live.reduce((a, c) => a + c.steered, 0),
    reconnected: back.length,
    seconds_to_all: round(stormSeconds, 2),
    seconds_to_first_back: back.length ? round((firstBack - killedAt) / 1000, 2) : null,
    seconds_to_half_back: backSeconds(50),
    seconds_to_90_back: backSeconds(90),
    refused_attempts: storm.reduce((a, c) => a + c.failures, 0) - failures0,
    not_recovered: storm.reduce((a, c) => a + c.notRecovered, 0),
    on_nodes: Object.fromEntries(survivors.map((g) => [g.node, storm.filter((c) => c.node === g.node).length])),
    history_reads: {
      asked: issued + merged,
      issued,
      merged,
      recoveries: sum(reads1, "recovered") - sum(reads0, "recovered"),
      redis_evalsha: evalsha1 - evalsha0,
      published_meanwhile: publishedDuring.session + publishedDuring.unicast + publishedDuring.live,
    },
    cpu_without_storm: {
      gateways: calmCpu("gateways"),
      nginx: calmCpu("nginx"),
      redis: calmCpu("redis"),
      loadgen: round((calmOwn.user + calmOwn.system) / 1e6 / calmSeconds, 2),
    },
    cpu_during_storm: {
      gateways: cpu("gateways"),
      nginx: cpu("nginx"),
      redis: cpu("redis"),
      loadgen: round((own.user + own.system) / 1e6 / stormSeconds, 2),
    },
    published: { ...published },
    published_during: publishedDuring,
    expected: expectedStorm,
    deliveries: received,
    lost: expectedStorm - received,
    duplicates: sessionTally.duplicates + uniDuplicates,
    stray: uniStray,
    live: {
      expected: published.live * live.length,
      lost: published.live * live.length - liveTally.deliveries,
      duplicates: liveTally.duplicates,
      calm,
      storm: during,
      p99_ratio: p99Ratio,
      ok: p99Ratio !== null && p99Ratio <= 3,
    },
    errors: stormErrors.slice(0, 5),
  };
}

// -- notifier: in-app notifications through `archmesh-rt notifier` to connected clients -------

const ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney"];

async function api(method, route, body) {
  const res = await fetch(`http://127.0.0.1:${args["notifier-port"]}${route}`, {
    method,
    headers: { authorization: `Bearer ${process.env.BENCH_API_KEY}`, "content-type": "application/json" },
    body,
  });
  if (!res.ok) throw new Error(`${method} ${route}: ${res.status} ${await res.text()}`);
  return res.json();
}

// Every user has saved preferences with quiet hours (22:00-07:00 in one of five zones, so some
// are inside them right now) and email on: the notifier evaluates both for every request.
async function savePreferences(count) {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      const prefs = {
        timezone: ZONES[i % ZONES.length],
        quiet_hours: { enabled: true, start: "22:00", end: "07:00" },
        channels: { default: { in_app: true, email: true, push: false, sms: false } },
      };
      await api("PUT", `/api/users/u${i}/preferences`, JSON.stringify(prefs));
    }
  };
  await Promise.all(Array.from({ length: 20 }, worker));
}

// One POST body of notifications `first`..`first+size-1`, with timestamp placeholders.
function notificationBatch(first, size, to) {
  const items = [];
  for (let seq = first; seq < first + size; seq += 1) {
    items.push({
      user_id: `u${to[seq]}`, type: "bench_event", title: "Bench", body: "A benchmark notification",
      channels: ["in_app"], data: { seq, ts: TS_MARK.toString() },
    });
  }
  const buf = Buffer.from(JSON.stringify({ notifications: items }));
  const marks = [];
  for (let at = buf.indexOf(TS_MARK); at >= 0; at = buf.indexOf(TS_MARK, at + TS_DIGITS)) marks.push(at);
  return { buf, marks };
}

function stampAll(batch) {
  const digits = String(Math.round(now() * 1000)).padStart(TS_DIGITS, "0");
  for (const at of batch.marks) batch.buf.write(digits, at, "latin1");
  return batch.buf;
}

async function notifierScenario() {
  const users = conf.clients;
  await savePreferences(users);
  await connectAll(users, (i) => [userChannel(i)]);
  const warm = notificationBatch(-1, 1, { [-1]: 0 });
  let warmed = false;
  onDelivery = (client, seq) => {
    if (client.index === 0 && seq === -1) warmed = true;
  };
  await api("POST", "/api/notifications/batch", stampAll(warm));
  for (let waited = 0; !warmed; waited += 50) {
    if (waited > 15000) throw new Error("warm-up notification never arrived");
    await sleep(50);
  }
  const to = targets(users, conf.messages);
  const batches = [];
  for (let first = 0; first < conf.messages; first += conf.batch) {
    batches.push(notificationBatch(first, Math.min(conf.batch, conf.messages - first), to));
  }
  return measured(async () => {
    const tally = new Tally(users, conf.messages, 1);
    const start = now();
    let posted = 0;
    let failed = 0;
    let inFlight = 0;
    let next = 0;
    onDelivery = (client, seq, ts) => tally.record(client, seq, ts);
    // Keep at most `window` notifications posted but not yet delivered.
    while (next < batches.length && (now() - start) / 1000 < conf.cap) {
      if (posted - tally.deliveries >= conf.window || inFlight >= 4) {
        await sleep(2);
        continue;
      }
      const batch = batches[next++];
      posted += batch.marks.length;
      inFlight += 1;
      api("POST", "/api/notifications/batch", stampAll(batch))
        .then((reply) => (failed += reply.failed))
        .catch(() => (failed += batch.marks.length))
        .finally(() => (inFlight -= 1));
    }
    const end = now() + 10000;
    while (tally.deliveries + failed < posted && now() < end) await sleep(20);
    return { ...tally.summary(posted, start), refused: failed };
  });
}

try {
  const result = await scenario();
  result.closed_early = clients.filter((c) => c && c.closed !== undefined).length;
  process.stdout.write(`${JSON.stringify({ system: SYSTEM, scenario: SCENARIO, ...result })}\n`);
} catch (err) {
  process.stdout.write(`${JSON.stringify({ system: SYSTEM, scenario: SCENARIO, error: String(err) })}\n`);
  process.exitCode = 1;
} finally {
  for (const client of clients) client?.ws.terminate();
  redis.disconnect();
  raw.sock.destroy();
  setTimeout(() => process.exit(), 200).unref();
}
