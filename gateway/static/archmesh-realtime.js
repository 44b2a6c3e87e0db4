/**
 * ArchMesh Realtime browser client: an ES module with no dependencies.
 *
 *   import { ArchMeshRealtime } from "./archmesh-realtime.js";
 *   const client = new ArchMeshRealtime("wss://rt.example.com/ws", { token: fetchToken });
 *   client.addEventListener("publication", (e) => render(e.detail.data));
 *   await client.connect();
 *   await client.subscribe("session:s1");
 *
 * Reconnects by itself (capped exponential backoff with full jitter) after any disconnect
 * the gateway marks as retryable and after network failures, asking the token provider for
 * a fresh token each time; resubscribes every channel from the last offset it saw and drops
 * publications it already delivered. A close with code 4500-4999 is final (state "closed").
 *
 * A subscription that a subscription token granted ends at that token's `exp`. Given a
 * `subscriptionToken(channel)` option, the client asks it for a fresh token ahead of expiry (at
 * a random point in the last 10-30% of the token's life) and sends `sub_refresh`; if the
 * gateway ended the subscription anyway (`token_expired`), it asks once more and resubscribes
 * from the last offset seen, so nothing is lost while access continues.
 *
 * Events (CustomEvent, payload in `event.detail`):
 *   "state"            {state, attempt, delay, code, reason}
 *   "publication"      {channel, offset, epoch, data}   (offset/epoch null for bare PUBLISH)
 *   "subscribed"       {channel, offset, epoch, recovered, reason}
 *   "recovery_failed"  {channel, reason, offset, epoch}  missed messages could not be replayed
 *   "unsubscribed"     {channel, reason}  the gateway ended a subscription that the client does
 *                      not resume (reason "revoked", or "token_expired" with no fresh token)
 *   "error"            RealtimeError for errors no request waits for (e.g. a refused
 *                      resubscription, a frame error without id)
 *
 * In Node (>= 20, which has no global WebSocket) pass `{ WebSocket }` from the `ws` package.
 *
 * Server-Sent Events: by default (`transports: ["websocket", "sse"]`) the client moves to the
 * gateway's `GET /sse` (read over fetch, tokens in headers) once `sseFallbackAfter` WebSocket
 * attempts in a row failed before they opened (a proxy refusing `Upgrade`); `["websocket"]`
 * never does, `["sse"]` starts there. While on SSE it tries a WebSocket again every
 * `websocketRetryInterval` ms (and on a reconnect once that long passed since the last try):
 * when one opens, it moves back, resubscribing every channel from the last position seen (no
 * gap, no duplicate). `client.transport` says which one it is on; "transport" tells each move.
 * An SSE stream only receives: subscribe/unsubscribe reopen it with the new channel set and
 * the last positions; a subscription token is renewed by reopening it with the fresh token;
 * ping, refresh, presence and history need the WebSocket (they reject with "unsupported").
 *
 *   "transport"        {transport, previous}  the client connected on another transport than
 *                      its last connection's (emitted before that connection's "state")
 *
 * The same module has the notifier's inbox client, ArchMeshInbox (pages, marks, live counts
 * followed from this client, seen reporting for displayed items): see its class below.
 */

export const State = Object.freeze({
  CONNECTING: "connecting",
  CONNECTED: "connected",
  RECONNECTING: "reconnecting",
  CLOSED: "closed",
});

// WebSocket close codes after which reconnecting cannot help (besides 4500-4999).
const FINAL_WS_CODES = new Set([1002, 1003, 1007, 1008, 1009, 1010]);
// Items of one connect frame (the gateway's limit); more go as separate subscribe frames.
const CONNECT_SUBSCRIBE_LIMIT = 100;

/**
 * Whether a close with `code` (null: connection lost) calls for a reconnect: 4500-4999 and
 * the codes that mean the client itself is broken (1002, 1003, 1007-1010) do not.
 * @param {number | null | undefined} code
 */
export function shouldReconnect(code) {
  if (code === null || code === undefined) return true;
  if (code >= 4500 && code <= 4999) return false;
  return !FINAL_WS_CODES.has(code);
}

/**
 * Full jitter: uniform in [0, min(cap, base * 2**attempt)]; `attempt` counts from 0.
 * @param {number} attempt @param {number} base @param {number} cap
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, base, cap, random = Math.random) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(Math.max(attempt, 0), 60));
  return random() * ceiling;
}

/** An error reply (`code`: forbidden, invalid_token, ...) or a final close (`code` "closed"). */
export class RealtimeError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{request?: string, channel?: string, closeCode?: number | null, reason?: string}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "RealtimeError";
    this.code = code;
    this.request = extra.request ?? null;
    this.channel = extra.channel ?? null;
    this.closeCode = extra.closeCode ?? null;
    this.reason = extra.reason ?? null;
  }
}

async function resolveToken(source) {
  const value = typeof source === "function" ? await source() : source;
  if (typeof value !== "string" || !value) {
    throw new TypeError("token must be a non-empty string (or a function returning one)");
  }
  return value;
}

// A token is renewed at a uniformly random point in this last part of its life.
const RENEW_WINDOW = [0.1, 0.3];

/** `exp` and `iat` of a JWT, read from its payload without verifying (the gateway verifies). */
function tokenTimes(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    if (!claims || typeof claims.exp !== "number") return null;
    return { exp: claims.exp, iat: typeof claims.iat === "number" ? claims.iat : null };
  } catch {
    return null;
  }
}

/** Milliseconds until `token` should be renewed (null: it has no `exp`): spread over the last
 * 10-30% of its life, so clients whose tokens were minted together do not all ask together. */
function renewDelay(token, random) {
  const times = tokenTimes(token);
  if (!times) return null;
  const now = Date.now() / 1000;
  const start = times.iat !== null && times.iat < times.exp ? times.iat : now;
  const [low, high] = RENEW_WINDOW;
  const beforeExp = (times.exp - start) * (low + (high - low) * random());
  return Math.max(0, (times.exp - beforeExp - now) * 1000);
}

function isInt(value) {
  return Number.isInteger(value);
}

function makeEvent(type, detail) {
  if (typeof CustomEvent === "function") return new CustomEvent(type, { detail });
  const event = new Event(type);
  Object.defineProperty(event, "detail", { value: detail });
  return event;
}

export class ArchMeshRealtime extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// URL of the gateway's /ws endpoint
   * @param {object} options
   * @param {string | (() => string | Promise<string>)} options.token  JWT or provider,
   *   called on every (re)connect
   * @param {Function} [options.WebSocket]  constructor, default globalThis.WebSocket
   * @param {number} [options.backoffBase]  ms, default 500
   * @param {number} [options.backoffCap]  ms, default 20000
   * @param {number} [options.maxAttempts]  reconnect attempts before giving up, default Infinity
   * @param {number} [options.requestTimeout]  ms, default 10000
   * @param {() => number} [options.random]  jitter source, default Math.random
   * @param {(channel: string) => string | Promise<string>} [options.subscriptionToken]  a fresh
   *   subscription token for a channel subscribed with one, asked ahead of its expiry
   * @param {Array<"websocket" | "sse">} [options.transports]  in order of preference, default
   *   ["websocket", "sse"]
   * @param {number} [options.sseFallbackAfter]  WebSocket attempts failing before they open
   *   after which the client moves to SSE, default 2
   * @param {number} [options.websocketRetryInterval]  ms between tries of a WebSocket while on
   *   SSE, default 60000 (Infinity: stay on SSE)
   * @param {string} [options.sseUrl]  default: `url` with http(s) and /sse for ws(s) and /ws
   * @param {Function} [options.fetch]  default globalThis.fetch (SSE only)
   */
  constructor(url, options = {}) {
    super();
    const WS = options.WebSocket ?? globalThis.WebSocket;
    this.transports = options.transports ?? ["websocket", "sse"];
    if (!this.transports.length || this.transports.some((t) => t !== "websocket" && t !== "sse")) {
      throw new TypeError('options.transports: "websocket" and/or "sse"');
    }
    if (typeof WS !== "function" && this.transports.includes("websocket")) {
      throw new TypeError("no WebSocket implementation: pass options.WebSocket");
    }
    if (!options.token) {
      throw new TypeError("options.token is required (a JWT or a function returning one)");
    }
    this.url = url;
    this.backoffBase = options.backoffBase ?? 500;
    this.backoffCap = options.backoffCap ?? 20000;
    this.maxAttempts = options.maxAttempts ?? Infinity;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this._WebSocket = WS;
    this._token = options.token;
    this._random = options.random ?? Math.random;
    this._subscriptionToken = options.subscriptionToken ?? null;
    this.sseFallbackAfter = options.sseFallbackAfter ?? 2;
    this.websocketRetryInterval = options.websocketRetryInterval ?? 60000;
    this.sseUrl = options.sseUrl ?? url.replace(/^ws/, "http").replace(/\/ws(?=$|\?)/, "/sse");
    // Called as a plain function: a browser's fetch refuses any `this` but the window.
    this._fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    /** "websocket" or "sse": the transport of the current (or last) connection attempt. */
    this.transport = this.transports[0];
    this._connectedOn = this.transport; // the transport of the last connection made
    this._wsFailures = 0; // WebSocket attempts in a row that failed before they opened
    this._wsTriedAt = 0; // Date.now() of the last WebSocket attempt (or probe)
    this._probe = null; // {timer, ws} while on SSE: the next try of a WebSocket
    this._unreachable = false; // an SSE attempt since the last connection got no answer at all
    /** @type {{abort: AbortController, reopen: boolean, switchTo: any} | null} while a stream is open */
    this._sse = null;

    /** @type {string} */
    this.state = State.CLOSED;
    this.attempt = 0;
    /** The last `connected` reply: {client_id, user_id, node, expires_at}. */
    this.info = null;
    /** Set when the client stopped for good: {code, reason}. */
    this.closed = null;

    this._started = false;
    this._closing = false;
    this._ws = null;
    this._timer = null;
    this._first = null;
    this._nextId = 1;
    this._connectedWaiters = new Set();
    this._closeWaiters = [];
    /** @type {Map<string, {token: any, since: any, latest?: boolean | null, waiters: Set<any>, sentToken: string | null, renewal: any}>} */
    this._subs = new Map();
    /** @type {Map<string, {offset: number, epoch: string}>} */
    this._positions = new Map();
    // Per connection: request id -> {resolve, reject, request}; subscribe id -> channel;
    // channels whose subscribe is in flight (their publications are dropped until the
    // reply, which replays them from history) -> position sent.
    this._pending = new Map();
    this._subRequests = new Map();
    this._awaiting = new Map();
    this._connectId = null;
    /** The own channel's `since` in the connect frame sent. */
    this._ownSince = null;
    this._disconnect = null;
  }

  /** Channels subscribed (kept across reconnects). */
  get channels() {
    return [...this._subs.keys()];
  }

  /** Last {offset, epoch} seen on `channel`, or null. */
  position(channel) {
    return this._positions.get(channel) ?? null;
  }

  /** Listen to an event with a handler that receives `event.detail`; returns an "off". */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /**
   * Connect and resolve with the `connected` reply. Network failures are retried with
   * backoff; rejects with a RealtimeError (code "closed", closeCode e.g. 4501) if the
   * gateway refuses for good or maxAttempts runs out.
   */
  connect() {
    if (this._started) return Promise.reject(new Error("connect() may be called once"));
    this._started = true;
    const first = new Promise((resolve, reject) => {
      this._first = { resolve, reject };
    });
    this._setState({ state: State.CONNECTING });
    this._open();
    return first;
  }

  /** Close for good; resolves once the state is "closed". */
  close() {
    if (this.state === State.CLOSED && this.closed) return Promise.resolve();
    const done = new Promise((resolve) => this._closeWaiters.push(resolve));
    this._closing = true;
    clearTimeout(this._timer);
    this._timer = null;
    this._stopProbe();
    const ws = this._ws;
    if (this._sse) {
      this._sse.abort.abort();
    } else if (ws && ws.readyState <= 1) {
      ws.close(1000, "client closed");
    } else {
      this._finish(null);
    }
    return done;
  }

  /**
   * Subscribe (kept across reconnects). `token`: a subscription JWT (or provider) for a
   * session the connection token does not grant; `since`: {offset, epoch} to replay from;
   * `latest`: true to get the channel's latest publication right after subscribing (and after
   * a reconnect that could not recover), false to not; left out, the gateway's default.
   * Resolves with {channel, offset, epoch, recovered, reason}; rejects with a
   * RealtimeError (code forbidden, invalid_channel, ...) if refused.
   */
  subscribe(channel, { token, since, latest } = {}) {
    if (this.closed) return Promise.reject(this._closedError());
    if (!this._started) return Promise.reject(new Error("call connect() first"));
    let sub = this._subs.get(channel);
    if (!sub) {
      sub = { token: null, since: null, waiters: new Set(), sentToken: null, renewal: null };
      this._subs.set(channel, sub);
    }
    if (token) sub.token = token;
    sub.since = since ?? null;
    sub.latest = latest ?? null;
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null };
      waiter.timer = setTimeout(() => {
        sub.waiters.delete(waiter);
        reject(new RealtimeError("timeout", `subscribe ${channel}: no reply`, { channel }));
      }, this.requestTimeout);
      sub.waiters.add(waiter);
      if (this.state === State.CONNECTED && this._ws) {
        this._sendSubscribe(this._ws, channel, sub);
      } else if (this.state === State.CONNECTED && this._sse) {
        this._reopenSse();
      } // else: sent with the next connect frame
    });
  }

  /** Stop receiving `channel` (no error if it was not subscribed). */
  async unsubscribe(channel) {
    const sub = this._subs.get(channel);
    this._subs.delete(channel);
    this._positions.delete(channel);
    if (sub) {
      this._stopRenewal(sub);
      for (const waiter of sub.waiters) {
        this._settle(waiter, sub, null, new RealtimeError("unsubscribed", `unsubscribed from ${channel}`));
      }
    }
    if (this.state !== State.CONNECTED) return;
    if (this._sse) return this._reopenSse();
    try {
      await this._request({ type: "unsubscribe", channel });
    } catch (err) {
      if (err.code !== "not_subscribed" && err.code !== "connection_lost") throw err;
    }
  }

  /** Round trip to the gateway; resolves with the `pong` frame. */
  ping() {
    return this._request({ type: "ping" });
  }

  /** Extend the connection with a new token (default: from the token provider). */
  async refresh(token) {
    if (token === undefined) {
      if (typeof this._token !== "function") {
        throw new TypeError("refresh() needs a token when the client has no provider");
      }
      token = await resolveToken(this._token);
    }
    const reply = await this._request({ type: "refresh", token });
    if (typeof this._token !== "function") this._token = token;
    return reply;
  }

  /**
   * A page of `channel`'s history without subscribing: the `history` reply, with
   * `publications` [{offset, epoch, data}] oldest first (newest first with `reverse`) and the
   * channel's `offset` and `epoch`. `since`: {offset, epoch}; `token`: a subscription token.
   */
  async history(channel, { limit, since, reverse, token } = {}) {
    const frame = { type: "history", channel, limit: limit ?? 100 };
    if (since) frame.since = { offset: since.offset, epoch: since.epoch };
    if (reverse) frame.reverse = true;
    if (token) frame.token = token;
    return this._request(frame);
  }

  /** Who is subscribed to `channel`: resolves with [{client_id, user_id}, ...]. */
  async presence(channel) {
    const reply = await this._request({ type: "presence", channel });
    return Array.isArray(reply.clients) ? reply.clients : [];
  }

  /** How many connections and distinct users are subscribed to `channel`: resolves with
   * the `presence_stats` reply {channel, connections, users}. */
  presence_stats(channel) {
    return this._request({ type: "presence_stats", channel });
  }

  // -- internals ----------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(makeEvent(type, detail));
  }

  _setState(detail) {
    const full = { attempt: 0, delay: null, code: null, reason: null, ...detail };
    this.state = full.state;
    this._emit("state", full);
  }

  _closedError() {
    const closed = this.closed ?? { code: null, reason: "client closed" };
    return new RealtimeError("closed", `connection closed (${closed.code}): ${closed.reason}`, {
      closeCode: closed.code,
      reason: closed.reason,
    });
  }

  _send(ws, frame) {
    if (ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  _request(frame) {
    if (this.closed) return Promise.reject(this._closedError());
    if (this.transport === "sse") {
      const message = `${frame.type} needs a WebSocket; this client is on SSE`;
      return Promise.reject(new RealtimeError("unsupported", message, { request: frame.type }));
    }
    if (!this._started) return Promise.reject(new Error("call connect() first"));
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      let waitingForConnection = null;
      const timer = setTimeout(() => {
        this._pending.delete(id);
        if (waitingForConnection) this._connectedWaiters.delete(waitingForConnection);
        reject(new RealtimeError("timeout", `${frame.type}: no reply`, { request: frame.type }));
      }, this.requestTimeout);
      const entry = {
        request: frame.type,
        resolve: (value) => (clearTimeout(timer), resolve(value)),
        reject: (err) => (clearTimeout(timer), reject(err)),
      };
      const send = () => {
        waitingForConnection = null;
        this._pending.set(id, entry);
        if (!this._send(this._ws, { ...frame, id })) {
          this._pending.delete(id);
          entry.reject(new RealtimeError("connection_lost", "connection lost", { request: frame.type }));
        }
      };
      if (this.state === State.CONNECTED && this._ws) {
        send();
      } else {
        waitingForConnection = { resolve: send, reject: entry.reject };
        this._connectedWaiters.add(waitingForConnection);
      }
    });
  }

  async _subscribeItem(channel, sub) {
    const id = this._nextId++;
    const item = { type: "subscribe", channel, id };
    const since = sub.since ?? this._positions.get(channel) ?? null;
    if (since) item.since = { offset: since.offset, epoch: since.epoch };
    if (typeof sub.latest === "boolean") item.latest = sub.latest;
    if (sub.token) {
      let token = await resolveToken(sub.token);
      const times = tokenTimes(token);
      if (times && times.exp <= Date.now() / 1000 + 1 && this._subscriptionToken) {
        token = await this._freshSubscriptionToken(channel, sub); // stale after a long outage
      }
      item.token = sub.sentToken = token;
    }
    this._subRequests.set(id, channel);
    this._awaiting.set(channel, since);
    return item;
  }

  _sendSubscribe(ws, channel, sub) {
    this._subscribeItem(channel, sub).then(
      (item) => this._send(ws, item), // if the socket is gone: resent on reconnect
      (err) => {
        for (const waiter of [...sub.waiters]) this._settle(waiter, sub, null, err);
        if (this._subs.get(channel) === sub && !sub.waiters.size) this._emit("error", err);
      },
    );
  }

  _settle(waiter, sub, value, err) {
    clearTimeout(waiter.timer);
    sub.waiters.delete(waiter);
    if (err) waiter.reject(err);
    else waiter.resolve(value);
  }

  _ownChannel() {
    return this.info ? `user:${this.info.user_id}` : null;
  }

  /** Open the next connection: SSE while WebSockets fail (see `_sseNext`), else a WebSocket;
   * `probe`: a WebSocket that opened while on SSE, which the client moves to. */
  async _open(probe = null) {
    this._timer = null;
    if (this._closing) {
      probe?.close(1000, "client closed");
      return this._finish(null);
    }
    let token;
    try {
      token = await resolveToken(this._token);
    } catch (err) {
      probe?.close(1000, "token provider failed");
      return this._ended({ code: null, reason: `token provider failed: ${err}`, reconnect: true });
    }
    if (this._closing) {
      probe?.close(1000, "client closed");
      return this._finish(null);
    }
    if (!probe && this._sseNext()) {
      this.transport = "sse";
      return this._openSse(token);
    }
    this.transport = "websocket";
    let ws = probe;
    if (!ws) {
      this._wsTriedAt = Date.now();
      try {
        ws = new this._WebSocket(this.url);
      } catch (err) {
        return this._ended({ code: null, reason: `cannot open ${this.url}: ${err}`, reconnect: false });
      }
    } else if (ws.readyState !== 1) {
      // The probe closed while the token was asked for: an ordinary lost connection.
      return this._ended({ code: null, reason: "connection lost", reconnect: true });
    }
    this._ws = ws;
    this._disconnect = null;
    let connected = false;
    const sent = new Set(); // channels the connect frame subscribes

    const onOpen = async () => {
      this._wsFailures = 0;
      try {
        const subs = [...this._subs.entries()];
        const items = [];
        for (const [channel, sub] of subs.slice(0, CONNECT_SUBSCRIBE_LIMIT)) {
          items.push(await this._subscribeItem(channel, sub));
          sent.add(channel);
        }
        const own = this._ownChannel();
        this._connectId = this._nextId++;
        const frame = { type: "connect", token, id: this._connectId };
        // Recover the user channel too: the gateway joins it from this position.
        this._ownSince = own && !this._subs.has(own) ? (this._positions.get(own) ?? null) : null;
        if (this._ownSince) frame.since = { offset: this._ownSince.offset, epoch: this._ownSince.epoch };
        if (items.length) frame.subscribe = items;
        this._send(ws, frame);
      } catch (err) {
        this._emit("error", new RealtimeError("client_error", String(err)));
        ws.close(1000, "client error");
      }
    };

    ws.addEventListener("message", (event) => {
      if (typeof event.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object" || Array.isArray(frame)) return;
      if (frame.type === "connected" && !connected) {
        connected = true;
        // The rest: past the connect frame's limit, or subscribed after it was sent.
        this._onConnected(ws, frame, [...this._subs.entries()].filter(([c]) => !sent.has(c)));
      } else if (frame.type === "error" && isInt(frame.id) && frame.id === this._connectId) {
        // The connect frame itself was refused: retrying the same frame cannot help.
        this._disconnect = {
          code: null,
          reason: `connect refused: ${frame.code}: ${frame.message}`,
          reconnect: false,
        };
        ws.close(1000, "connect refused");
      } else {
        this._onFrame(frame);
      }
    });

    ws.addEventListener("error", () => {
      // A "close" event always follows; the reason is decided there.
    });

    let opened = false;
    if (probe) {
      opened = true;
      onOpen();
    } else {
      ws.addEventListener("open", () => {
        opened = true;
        onOpen();
      });
    }
    ws.addEventListener("close", (event) => {
      if (!opened) this._wsFailures += 1;
      if (this._ws === ws) this._ws = null;
      this._connectionLost();
      if (this._closing) return this._finish(null);
      const code = isInt(event.code) ? event.code : null;
      if (this._disconnect) {
        const d = this._disconnect;
        const reconnect = d.reconnect && shouldReconnect(d.code);
        return this._ended({ code: d.code ?? code, reason: d.reason, reconnect });
      }
      const reason = event.reason || "connection lost";
      this._ended({ code, reason, reconnect: shouldReconnect(code) });
    });
  }

  /** Whether the next connection is an SSE stream: SSE is the only transport, or WebSockets
   * failed `sseFallbackAfter` times in a row before they opened and the last try is less than
   * `websocketRetryInterval` ago. */
  _sseNext() {
    if (!this.transports.includes("sse")) return false;
    if (!this.transports.includes("websocket")) return true;
    if (this._wsFailures < this.sseFallbackAfter) return false;
    return Date.now() - this._wsTriedAt < this.websocketRetryInterval;
  }

  _ended({ code, reason, reconnect }) {
    if (this._closing) return this._finish(null);
    if (!reconnect) return this._finish({ code, reason });
    if (this.attempt >= this.maxAttempts) {
      return this._finish({ code, reason: `gave up after ${this.attempt} reconnect attempts: ${reason}` });
    }
    const delay = backoffDelay(this.attempt, this.backoffBase, this.backoffCap, this._random);
    this.attempt += 1;
    this._setState({ state: State.RECONNECTING, attempt: this.attempt, delay, code, reason });
    this._timer = setTimeout(() => this._open(), delay);
  }

  _onConnected(ws, frame, extra) {
    const previous = this._ownChannel();
    this.info = {
      client_id: frame.client_id,
      user_id: frame.user_id,
      node: frame.node,
      expires_at: frame.expires_at,
    };
    const own = this._ownChannel();
    if (previous && previous !== own) this._positions.delete(previous);
    const sent = previous === own ? this._ownSince : null;
    const recovery = own && !this._subs.has(own) ? this._ownPosition(own, frame, sent) : null;
    this.attempt = 0;
    const before = this._connectedOn;
    this._connectedOn = this.transport;
    // Told once connected: attempts that fail on either transport (an outage) are no move.
    if (before !== this.transport) this._emit("transport", { transport: this.transport, previous: before });
    this._setState({ state: State.CONNECTED });
    if (this._first) {
      this._first.resolve(this.info);
      this._first = null;
    }
    const waiters = [...this._connectedWaiters];
    this._connectedWaiters.clear();
    for (const waiter of waiters) waiter.resolve();
    if (recovery) {
      // Told like a resubscription's outcome, once the state says connected.
      this._emit("subscribed", recovery);
      if (recovery.recovered === false) {
        const { channel, reason, offset, epoch } = recovery;
        this._emit("recovery_failed", { channel, reason: reason ?? "unknown", offset, epoch });
      }
    }
    if (ws) for (const [channel, sub] of extra) this._sendSubscribe(ws, channel, sub);
    else this._scheduleProbe(this._unreachable);
    this._unreachable = false;
  }

  /** `connected` holds the own channel's position (and `recovered` for the `since` sent): its
   * missed publications follow it, deduplicated from `sent`, like a subscribe's. Returns the
   * recovery's outcome as a `subscribed` detail when `since` was sent, else null. */
  _ownPosition(own, frame, sent) {
    if (typeof frame.offset !== "number" || typeof frame.epoch !== "string") return null; // older gateway
    const recovered = typeof frame.recovered === "boolean" ? frame.recovered : null;
    if (recovered === true && sent) {
      this._positions.set(own, { offset: sent.offset, epoch: sent.epoch });
    } else {
      this._positions.set(own, { offset: frame.offset, epoch: frame.epoch });
    }
    if (!sent || recovered === null) return null;
    const reason = typeof frame.reason === "string" ? frame.reason : null;
    return { channel: own, offset: frame.offset, epoch: frame.epoch, recovered, reason };
  }

  _connectionLost() {
    // The resubscription on reconnect sends a token again.
    for (const sub of this._subs.values()) this._stopRenewal(sub);
    this._awaiting.clear();
    this._subRequests.clear();
    this._connectId = null;
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const entry of pending) {
      entry.reject(new RealtimeError("connection_lost", "connection lost before the reply", { request: entry.request }));
    }
  }

  _finish(final) {
    if (this.closed) return;
    this.closed = final ?? { code: null, reason: "client closed" };
    this._stopProbe();
    clearTimeout(this._timer);
    this._timer = null;
    this._ws = null;
    this._connectionLost();
    const error = this._closedError();
    for (const waiter of this._connectedWaiters) waiter.reject(error);
    this._connectedWaiters.clear();
    for (const sub of this._subs.values()) {
      for (const waiter of [...sub.waiters]) this._settle(waiter, sub, null, error);
    }
    if (this._first) {
      this._first.reject(error);
      this._first = null;
    }
    this._setState({ state: State.CLOSED, code: this.closed.code, reason: this.closed.reason });
    for (const resolve of this._closeWaiters.splice(0)) resolve();
  }

  /** A `join`/`leave` event (ARCHMESH_JOIN_LEAVE channels), for a channel still subscribed:
   * emitted as the "join" / "leave" event with {channel, user_id, client_id}. */
  _onJoinLeave(frame) {
    const { channel, user_id, client_id } = frame;
    if (typeof channel !== "string" || typeof user_id !== "string") return;
    if (typeof client_id !== "string" || !this._subs.has(channel)) return;
    this._emit(frame.type, { channel, user_id, client_id });
  }

  _onFrame(frame) {
    if (frame.type === "unsubscribed" && !isInt(frame.id)) return this._onEnded(frame);
    switch (frame.type) {
      case "publication":
        return this._onPublication(frame);
      case "subscribed":
        return this._onSubscribed(frame);
      case "error":
        return this._onError(frame);
      case "join":
      case "leave":
        return this._onJoinLeave(frame);
      case "disconnect":
        this._disconnect = {
          code: isInt(frame.code) ? frame.code : null,
          reason: String(frame.reason ?? ""),
          reconnect: frame.reconnect !== false,
        };
        return;
      default:
        if (isInt(frame.id)) {
          const entry = this._pending.get(frame.id);
          if (entry) {
            this._pending.delete(frame.id);
            entry.resolve(frame);
          }
        }
    }
  }

  _onPublication(frame) {
    const { channel, data } = frame;
    if (typeof channel !== "string" || !data || typeof data !== "object") return;
    if (this._awaiting.has(channel)) return; // the pending subscribe replays it in order
    if (!this._subs.has(channel) && channel !== this._ownChannel()) return;
    const offset = isInt(frame.offset) ? frame.offset : null;
    const epoch = typeof frame.epoch === "string" ? frame.epoch : null;
    if (offset !== null && epoch !== null) {
      const known = this._positions.get(channel);
      if (known && known.epoch === epoch && offset <= known.offset) return; // duplicate
      this._positions.set(channel, { offset, epoch });
    }
    this._emit("publication", { channel, offset, epoch, data });
  }

  _onSubscribed(frame) {
    const { channel } = frame;
    if (isInt(frame.id)) this._subRequests.delete(frame.id);
    const sent = this._awaiting.get(channel) ?? null;
    this._awaiting.delete(channel);
    if (!isInt(frame.offset) || typeof frame.epoch !== "string") return;
    const unasked = !isInt(frame.id) && !sent && frame.reason === undefined;
    if (unasked && !this._subs.has(channel) && channel !== this._ownChannel()) {
      // A backend subscribed this connection (control API): adopt it like one of ours, so its
      // publications arrive and a reconnect resubscribes it from the last offset seen. (An
      // unasked `subscribed` with a reason, history_lost, never adds a channel.)
      const adopted = { token: null, since: null, waiters: new Set(), sentToken: null, renewal: null };
      this._subs.set(channel, adopted);
    }
    if (!this._subs.has(channel) && channel !== this._ownChannel()) return; // unsubscribed meanwhile
    const reply = {
      channel,
      offset: frame.offset,
      epoch: frame.epoch,
      recovered: typeof frame.recovered === "boolean" ? frame.recovered : null,
      reason: typeof frame.reason === "string" ? frame.reason : null,
    };
    if (reply.recovered === true && sent) {
      // The reply holds the stream head; the missed messages follow it, so dedupe from
      // the position sent (or a later one already seen in that epoch).
      const known = this._positions.get(channel);
      if (!known || known.epoch !== sent.epoch || known.offset < sent.offset) {
        this._positions.set(channel, { offset: sent.offset, epoch: sent.epoch });
      }
    } else {
      // With `latest: true` the publication at `offset` follows: it must not look seen.
      const head = frame.latest === true && reply.offset > 0 ? reply.offset - 1 : reply.offset;
      this._positions.set(channel, { offset: head, epoch: reply.epoch });
    }
    const sub = this._subs.get(channel);
    if (sub) {
      sub.since = null;
      this._scheduleRenewal(channel, sub);
    }
    this._emit("subscribed", reply);
    if (reply.recovered === false) {
      this._emit("recovery_failed", {
        channel,
        reason: reply.reason ?? "unknown",
        offset: reply.offset,
        epoch: reply.epoch,
      });
    }
    if (sub) for (const waiter of [...sub.waiters]) this._settle(waiter, sub, reply, null);
  }

  _onError(frame) {
    const code = String(frame.code ?? "unknown");
    const message = String(frame.message ?? "");
    const id = isInt(frame.id) ? frame.id : null;
    const channel = id !== null ? this._subRequests.get(id) : undefined;
    if (channel !== undefined) {
      this._subRequests.delete(id);
      this._awaiting.delete(channel);
      const error = new RealtimeError(code, `subscribe refused: ${code}: ${message}`, {
        request: "subscribe",
        channel,
      });
      const sub = this._subs.get(channel);
      if (!sub) {
        this._positions.delete(channel);
        return;
      }
      this._subs.delete(channel);
      this._stopRenewal(sub);
      const waiters = [...sub.waiters];
      for (const waiter of waiters) this._settle(waiter, sub, null, error);
      if (!waiters.length) this._emit("error", error); // a resubscription was refused
      return;
    }
    const entry = id !== null ? this._pending.get(id) : undefined;
    if (entry) {
      this._pending.delete(id);
      entry.reject(new RealtimeError(code, `${entry.request} refused: ${code}: ${message}`, { request: entry.request }));
      return;
    }
    this._emit("error", new RealtimeError(code, message));
  }

  // -- Server-Sent Events -------------------------------------------------------------

  /** Open `GET /sse` with every channel and the positions seen (as the stream's event id:
   * base64url JSON {channel: [offset, epoch]}), and feed its events to the frame handling. */
  async _openSse(token) {
    const abort = new AbortController();
    const stream = (this._sse = { abort, reopen: false, switchTo: null });
    this._disconnect = null;
    const channels = [...this._subs.keys()];
    const own = this._ownChannel();
    const positions = {};
    for (const channel of own ? [...channels, own] : channels) {
      const since = this._subs.get(channel)?.since ?? this._positions.get(channel);
      if (since) positions[channel] = [since.offset, since.epoch];
      // Its `subscribed` settles the position; publications before it are not expected.
      if (channel !== own || since) this._awaiting.set(channel, since ?? null);
    }
    const query = new URLSearchParams(channels.map((c) => ["channel", c]));
    if (Object.keys(positions).length) query.set("last_event_id", base64url(JSON.stringify(positions)));
    const url = `${this.sseUrl}${this.sseUrl.includes("?") ? "&" : "?"}${query}`;
    const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
    const grants = await this._sseSubscriptionTokens();
    if (grants.length) headers["X-Subscription-Token"] = grants.join(",");
    let ended = null;
    let answered = false;
    try {
      const response = await this._fetch(url, {
        headers,
        signal: abort.signal,
        cache: "no-store",
      });
      answered = true;
      if (!response.ok) {
        let code = `http_${response.status}`;
        try {
          code = (await response.json()).error.code ?? code;
        } catch {
          // not the gateway's JSON: keep the status
        }
        // Refusals about the client itself are final, like a 4500-4999 close.
        const final = [400, 401, 403, 429].includes(response.status);
        ended = { code: null, reason: `SSE refused: ${response.status} ${code}`, reconnect: !final };
      } else {
        await this._readSse(response.body, new Set(channels));
      }
    } catch (err) {
      if (!stream.reopen && !stream.switchTo && !this._closing) {
        ended = { code: null, reason: `SSE stream failed: ${err}`, reconnect: true };
        // Nothing answered at all (the gateway is down, the network gone): no sign of a proxy
        // refusing upgrades, so a WebSocket gets the next attempts again.
        if (!answered) {
          this._wsFailures = 0;
          this._unreachable = true; // once connected on SSE, try a WebSocket again at once
        }
      }
    }
    if (this._sse === stream) this._sse = null;
    this._stopProbe();
    this._connectionLost();
    if (this._closing) {
      stream.switchTo?.close(1000, "client closed");
      return this._finish(null);
    }
    if (stream.switchTo) return this._open(stream.switchTo); // a WebSocket opened: move there
    if (stream.reopen) return this._open(); // new channel set: at once, no backoff
    if (this._disconnect) {
      const d = this._disconnect;
      return this._ended({ code: d.code, reason: d.reason, reconnect: d.reconnect && shouldReconnect(d.code) });
    }
    this._ended(ended ?? { code: null, reason: "SSE stream ended", reconnect: true });
  }

  /** `opened`: the channels the stream was opened with; one subscribed since then (before the
   * stream said `connected`) has the stream reopened at once. */
  async _readSse(body, opened) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let connected = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue; // a comment (": ping") or a retry field
        let frame;
        try {
          frame = JSON.parse(data);
        } catch {
          continue;
        }
        if (!frame || typeof frame !== "object" || Array.isArray(frame)) continue;
        if (frame.type === "connected" && !connected) {
          connected = true;
          this._onConnected(null, frame, []);
          if (this.channels.some((channel) => !opened.has(channel))) this._reopenSse();
        } else {
          this._onFrame(frame);
        }
      }
    }
  }

  /** The subscription tokens of the subscriptions made with one, for the stream's
   * X-Subscription-Token header: a stale one is replaced by a fresh one first. A subscription
   * whose token cannot be had is dropped and reported (its subscribe rejects). */
  async _sseSubscriptionTokens() {
    const tokens = [];
    for (const [channel, sub] of [...this._subs.entries()]) {
      if (!sub.token) continue;
      try {
        let token = await resolveToken(sub.token);
        const times = tokenTimes(token);
        if (times && times.exp <= Date.now() / 1000 + 1 && this._subscriptionToken) {
          token = await this._freshSubscriptionToken(channel, sub);
        }
        sub.sentToken = token;
        tokens.push(token);
      } catch (err) {
        if (this._subs.get(channel) !== sub) continue;
        this._subs.delete(channel);
        this._awaiting.delete(channel);
        const error = new RealtimeError("token_error", `subscription token for ${channel}: ${err}`, {
          request: "subscribe",
          channel,
        });
        const waiters = [...sub.waiters];
        for (const waiter of waiters) this._settle(waiter, sub, null, error);
        if (!waiters.length) this._emit("error", error);
      }
    }
    return tokens;
  }

  /** While on SSE: try a WebSocket once `websocketRetryInterval` passed since the last try, or
   * `now` (the gateway was unreachable before: its WebSockets failed for that, not a proxy). */
  _scheduleProbe(now = false) {
    this._stopProbe();
    const stream = this._sse;
    if (!stream || !this.transports.includes("websocket")) return;
    if (!Number.isFinite(this.websocketRetryInterval)) return;
    const wait = now ? 0 : Math.max(0, this._wsTriedAt + this.websocketRetryInterval - Date.now());
    const probe = { timer: null, ws: null };
    probe.timer = setTimeout(() => this._runProbe(stream, probe), wait);
    this._probe = probe;
  }

  _stopProbe() {
    const probe = this._probe;
    this._probe = null;
    if (!probe) return;
    clearTimeout(probe.timer);
    if (probe.ws && probe.ws.readyState <= 1) probe.ws.close(1000, "not needed");
  }

  /** Open a WebSocket beside the stream. If it opens, the stream ends and the client connects
   * over that socket, every channel resubscribed from the last position seen (so nothing is
   * lost or repeated across the move); if not, the next try is scheduled. */
  _runProbe(stream, probe) {
    if (this._probe !== probe || this._sse !== stream || this._closing) return;
    this._wsTriedAt = Date.now();
    let ws;
    try {
      ws = new this._WebSocket(this.url);
    } catch {
      return this._scheduleProbe();
    }
    probe.ws = ws;
    // The `ws` package throws an "error" nobody listens to; "close" follows it anyway.
    ws.addEventListener("error", () => {});
    const done = () => {
      ws.removeEventListener("open", opened);
      ws.removeEventListener("close", failed);
    };
    const opened = () => {
      done();
      if (this._probe !== probe || this._sse !== stream || stream.reopen || this._closing) {
        ws.close(1000, "not needed");
        return;
      }
      this._probe = null;
      this._wsFailures = 0;
      stream.switchTo = ws;
      this._setState({ state: State.RECONNECTING, attempt: 0, delay: 0, reason: "moving to websocket" });
      stream.abort.abort();
    };
    const failed = () => {
      done();
      if (this._probe === probe) this._scheduleProbe();
    };
    ws.addEventListener("open", opened);
    ws.addEventListener("close", failed);
  }

  /** The channel set changed: end this stream and open the next one at once (coalesced). */
  _reopenSse() {
    const stream = this._sse;
    if (!stream || stream.reopen) return;
    stream.reopen = true;
    setTimeout(() => stream.abort.abort(), 0);
  }

  // -- subscription tokens ------------------------------------------------------------

  async _freshSubscriptionToken(channel, sub) {
    const token = await resolveToken(() => this._subscriptionToken(channel));
    // A resubscription after a reconnect uses the newest token (a provider is asked anyway).
    if (typeof sub.token !== "function") sub.token = token;
    return token;
  }

  _stopRenewal(sub) {
    clearTimeout(sub.renewal);
    sub.renewal = null;
  }

  _scheduleRenewal(channel, sub) {
    this._stopRenewal(sub);
    if (!this._subscriptionToken || !sub.sentToken) return;
    const delay = renewDelay(sub.sentToken, this._random);
    if (delay !== null) sub.renewal = setTimeout(() => this._renew(channel, sub), delay);
  }

  /** Ahead of expiry: a fresh token, sent as `sub_refresh`. A failure is reported; the gateway
   * then ends the subscription at expiry, and `_onEnded` asks once more. */
  async _renew(channel, sub) {
    sub.renewal = null;
    if (this._subs.get(channel) !== sub) return;
    let token;
    try {
      token = await this._freshSubscriptionToken(channel, sub);
    } catch (err) {
      const error = new RealtimeError("token_error", `subscription token for ${channel}: ${err}`, {
        request: "sub_refresh",
        channel,
      });
      return this._emit("error", error);
    }
    if (this.transport === "sse") {
      // A stream takes no sub_refresh: it reopens with the fresh token, from the positions seen.
      if (this._subs.get(channel) === sub) this._reopenSse();
      return;
    }
    try {
      await this._request({ type: "sub_refresh", channel, token });
    } catch (err) {
      // Lost: the reconnect resubscribes with a token. not_subscribed: it expired meanwhile.
      if (["connection_lost", "closed", "not_subscribed"].includes(err.code)) return;
      return this._emit("error", new RealtimeError(err.code, err.message, { request: "sub_refresh", channel }));
    }
    if (this._subs.get(channel) === sub) {
      sub.sentToken = token;
      this._scheduleRenewal(channel, sub);
    }
  }

  /** An unasked `unsubscribed`: the gateway ended a subscription. */
  _onEnded(frame) {
    const channel = String(frame.channel ?? "");
    const reason = String(frame.reason ?? "");
    const sub = this._subs.get(channel);
    if (!sub) return;
    this._stopRenewal(sub);
    if (reason === "token_expired" && this._subscriptionToken) return this._resume(channel, sub);
    this._subs.delete(channel);
    this._positions.delete(channel);
    this._emit("unsubscribed", { channel, reason });
  }

  /** After `token_expired`: ask once more, and resubscribe from the last offset seen. */
  async _resume(channel, sub) {
    try {
      await this._freshSubscriptionToken(channel, sub);
    } catch (err) {
      if (this._subs.get(channel) !== sub) return;
      this._subs.delete(channel);
      this._positions.delete(channel);
      const error = new RealtimeError("token_error", `subscription token for ${channel}: ${err}`, {
        request: "subscribe",
        channel,
      });
      this._emit("error", error);
      return this._emit("unsubscribed", { channel, reason: "token_expired" });
    }
    if (this._subs.get(channel) !== sub) return; // unsubscribed meanwhile
    // Not connected: the reconnect resubscribes with the fresh token.
    if (this.state === State.CONNECTED && this._ws) this._sendSubscribe(this._ws, channel, sub);
    else if (this.state === State.CONNECTED && this._sse) this._reopenSse();
  }
}

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export default ArchMeshRealtime;

// -- the notifier's in-app inbox ----------------------------------------------------------

/**
 * A refusal of the notifier's inbox API: `code` is the API's (`not_found`, `bad_cursor`,
 * `validation_error`, `forbidden`, `invalid_token`, ...), `http_<status>` for an answer that is
 * not the API's JSON (e.g. `http_404`: no notifier behind that address), or `network_error`.
 */
export class InboxError extends Error {
  /**
   * @param {string} code @param {string} message
   * @param {{status?: number | null, fields?: Array<object> | null}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message);
    this.name = "InboxError";
    this.code = code;
    this.status = extra.status ?? null;
    this.fields = extra.fields ?? null;
  }
}

// The API's limit of ids in one bulk mark; more are sent in several requests.
const MARK_BATCH = 500;
const MARKS = ["seen", "read", "archive", "unarchive"];

/**
 * The notifier's in-app inbox of one user, over its HTTP API (`/api/users/{user}/inbox`).
 *
 *   const inbox = new ArchMeshInbox({ user: "ada", token: fetchToken });
 *   const { items, next_cursor, unread } = await inbox.page({ limit: 20 });
 *   inbox.follow(client);                       // live counts and items from the user channel
 *   inbox.on("counts", ({ unseen, unread }) => renderBadge(unseen, unread));
 *   inbox.observeSeen(listItemElement, item.id); // reports seen once it was on screen
 *
 * The token is the user's own (the one the gateway takes) or, on a backend, the API key; a
 * provider is asked again for a fresh token when the API answers 401. Refusals reject with an
 * InboxError carrying the API's `code`.
 *
 * Seen reporting: an observed element counts as seen once at least half of it was on screen
 * while the page was visible (IntersectionObserver; where there is none, at once). Ids are
 * gathered and sent in one `POST .../inbox/seen` at most every `seenInterval` ms, and what is
 * pending is sent at once (with `keepalive`) when the page is hidden or left.
 *
 * Events (CustomEvent, payload in `event.detail`):
 *   "counts"  {unseen, unread}  from the notifier's live events on `user:<id>` (see follow())
 *   "item"    an InboxItem, a new notification as it arrived live (not seen, not read)
 *   "seen"    {ids, unknown, unseen, unread}  after a batch of seen ids was stored
 *   "error"   InboxError of a seen report that failed (its ids may be observed again)
 */
export class ArchMeshInbox extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.user  whose inbox
   * @param {string | (() => string | Promise<string>)} options.token  the user's JWT or the
   *   API key, or a provider of one (asked again after a 401)
   * @param {string} [options.baseUrl]  the notifier's address, default the page's origin
   * @param {Function} [options.fetch]  default globalThis.fetch
   * @param {number} [options.seenInterval]  ms between seen reports, default 1000
   */
  constructor(options = {}) {
    super();
    if (typeof options.user !== "string" || !options.user) {
      throw new TypeError("options.user is required (whose inbox)");
    }
    if (!options.token) {
      throw new TypeError("options.token is required (a JWT or API key, or a function returning one)");
    }
    const base = options.baseUrl ?? globalThis.location?.origin;
    if (!base) throw new TypeError("options.baseUrl is required outside a page");
    this.user = options.user;
    this.baseUrl = String(base).replace(/\/+$/, "");
    this.seenInterval = options.seenInterval ?? 1000;
    this._token = options.token;
    this._fetch = options.fetch ?? ((...args) => globalThis.fetch(...args));
    this._path = `${this.baseUrl}/api/users/${encodeURIComponent(this.user)}/inbox`;
    /** The latest {unseen, unread} known (from a reply or a live event), null before any. */
    this.counts = null;
    this._liveSeq = 0; // live count events seen: a reply sent before one is older than it
    // Seen reporting: ids waiting to be sent, ids sent or being sent (never sent twice).
    this._pendingSeen = new Set();
    this._reportedSeen = new Set();
    this._seenTimer = null;
    this._lastSeenReport = 0;
    /** @type {Map<Element, {id: string, onScreen: boolean}>} */
    this._observed = new Map();
    this._observer = null;
    this._pageListeners = null;
  }

  /** Listen to an event with a handler that receives `event.detail`; returns an "off". */
  on(type, handler) {
    const listener = (event) => handler(event.detail);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /**
   * A page, newest first: {items, next_cursor, unseen, unread}. `cursor`: the `next_cursor`
   * of the page before; `limit` 1-500 (default 50); `types`: only these notification types;
   * `archived`: false (default, the inbox), true (the archive) or "all".
   */
  page({ cursor, limit, types, archived } = {}) {
    const query = new URLSearchParams();
    if (limit !== undefined && limit !== null) query.set("limit", String(limit));
    if (cursor) query.set("cursor", cursor);
    if (archived !== undefined && archived !== null) query.set("archived", String(archived));
    for (const type of types ?? []) query.append("type", type);
    const text = query.toString();
    return this._call("GET", text ? `${this._path}?${text}` : this._path);
  }

  /** One item; rejects with code "not_found" if it is not (or no longer) in the inbox. */
  item(id) {
    return this._call("GET", `${this._path}/${encodeURIComponent(id)}`);
  }

  /** Mark seen: one id (resolves {unseen, unread}; "not_found" if unknown) or an array of ids
   * (resolves {unseen, unread, unknown}). `keepalive`: the request outlives the page. */
  seen(ids, options) {
    return this._mark("seen", ids, options);
  }

  /** Mark read (read implies seen), like seen(). */
  read(ids, options) {
    return this._mark("read", ids, options);
  }

  /** Archive (archiving reads), like seen(). */
  archive(ids, options) {
    return this._mark("archive", ids, options);
  }

  /** Move back to the inbox (stays read), like seen(). */
  unarchive(ids, options) {
    return this._mark("unarchive", ids, options);
  }

  /** Every item seen: {unseen, unread, unknown}. */
  seenAll(options) {
    return this._markAll("seen", options);
  }

  /** Every item read (`POST .../inbox/read-all`): {unseen, unread, unknown}. */
  readAll(options) {
    return this._call("POST", `${this._path}/read-all`, undefined, options);
  }

  /** Every item archived: {unseen, unread, unknown}. */
  archiveAll(options) {
    return this._markAll("archive", options);
  }

  /** Every archived item back in the inbox: {unseen, unread, unknown}. */
  unarchiveAll(options) {
    return this._markAll("unarchive", options);
  }

  /**
   * Follow the notifier's live events on the user's channel (`user:<id>`, which the gateway
   * joins every connection of that user to) from an ArchMeshRealtime client: "counts" for
   * every `inbox` and `notification` event, "item" (before its "counts") for a notification.
   * Returns a function that stops following.
   */
  follow(client) {
    const channel = `user:${this.user}`;
    return client.on("publication", ({ channel: from, data }) => {
      if (from !== channel || !data || typeof data !== "object") return;
      if (data.type === "notification") {
        const { unseen, unread, notification_type: type, type: _kind, ...rest } = data;
        this._emit("item", { ...rest, type: type ?? "notification", seen: false, read: false, archived: false });
        // The notifier's events carry both counts; one published by hand may not: one more.
        const last = this.counts;
        this._liveCounts({ unseen, unread }, last && { unseen: last.unseen + 1, unread: last.unread + 1 });
      } else if (data.type === "inbox") {
        this._liveCounts(data, this.counts);
      }
    });
  }

  /**
   * Report `id` seen once `element` was at least half on screen while the page was visible
   * (at once where there is no IntersectionObserver). Each id is reported once; returns a
   * function that stops observing the element.
   */
  observeSeen(element, id) {
    if (this._reportedSeen.has(id) || this._pendingSeen.has(id)) return () => {};
    const observer = this._seenObserver();
    if (!observer || !element) {
      this._noteSeen(id);
      return () => {};
    }
    this._observed.set(element, { id, onScreen: false });
    observer.observe(element);
    return () => this._unobserve(element);
  }

  /** Stop observing every element (e.g. before the list is drawn again). */
  unobserveSeen() {
    for (const element of [...this._observed.keys()]) this._unobserve(element);
  }

  /** Send the seen ids gathered so far now (the page being hidden does it by itself). */
  flushSeen({ keepalive = false } = {}) {
    clearTimeout(this._seenTimer);
    this._seenTimer = null;
    return this._reportSeen(keepalive);
  }

  /** Stop observing and listening to the page; pending seen ids are sent first. */
  close() {
    this.unobserveSeen();
    this._observer?.disconnect();
    this._observer = null;
    if (this._pageListeners) {
      for (const [target, type, listener] of this._pageListeners) target.removeEventListener(type, listener);
      this._pageListeners = null;
    }
    return this.flushSeen();
  }

  // -- internals ----------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(makeEvent(type, detail));
  }

  /** Emit "counts" from an event's counts, a missing one taken from `fallback` (unseen is
   * never above unread); nothing if a count is missing and there is no fallback. */
  _liveCounts(given, fallback) {
    const pick = (name) => (Number.isInteger(given[name]) && given[name] >= 0 ? given[name] : fallback?.[name]);
    const unread = pick("unread");
    const unseen = pick("unseen");
    if (!Number.isInteger(unread) || !Number.isInteger(unseen)) return;
    this._liveSeq += 1;
    this.counts = { unseen: Math.min(unseen, unread), unread };
    this._emit("counts", { ...this.counts });
  }

  async _call(method, url, body, { keepalive = false } = {}) {
    const fresh = typeof this._token === "function";
    const seq = this._liveSeq;
    let response = await this._send(method, url, body, keepalive, await resolveToken(this._token));
    // An expired token: a provider is asked once more (the page's token may have just lapsed).
    if (response.status === 401 && fresh) {
      response = await this._send(method, url, body, keepalive, await resolveToken(this._token));
    }
    const type = response.headers.get("content-type") || "";
    const data = type.includes("json") ? await response.json().catch(() => null) : null;
    if (response.ok) {
      // A reply's counts are news only if no live event came while it was on its way: every
      // change is published, so a later event is at least as new as the reply.
      if (data && Number.isInteger(data.unseen) && Number.isInteger(data.unread) && seq === this._liveSeq) {
        this.counts = { unseen: data.unseen, unread: data.unread };
      }
      return data;
    }
    const error = data && typeof data === "object" && data.error && typeof data.error.code === "string" ? data.error : null;
    if (!error) {
      throw new InboxError(`http_${response.status}`, `${method} ${url}: HTTP ${response.status}`, { status: response.status });
    }
    throw new InboxError(error.code, String(error.message ?? error.code), {
      status: response.status,
      fields: Array.isArray(error.fields) ? error.fields : null,
    });
  }

  async _send(method, url, body, keepalive, token) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    try {
      return await this._fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        keepalive,
        cache: "no-store",
      });
    } catch (err) {
      throw new InboxError("network_error", `${method} ${url}: ${err?.message ?? err}`);
    }
  }

  async _mark(mark, ids, options) {
    if (typeof ids === "string") {
      return this._call("POST", `${this._path}/${encodeURIComponent(ids)}/${mark}`, undefined, options);
    }
    const list = [...new Set(ids ?? [])];
    if (!list.length) throw new TypeError(`${mark}(): an id or a non-empty array of ids`);
    let result = null;
    const unknown = [];
    for (let at = 0; at < list.length; at += MARK_BATCH) {
      const body = { ids: list.slice(at, at + MARK_BATCH) };
      result = await this._call("POST", `${this._path}/${mark}`, body, options);
      unknown.push(...(result.unknown ?? []));
    }
    return { ...result, unknown };
  }

  _markAll(mark, options) {
    if (!MARKS.includes(mark)) throw new TypeError(`no such mark: ${mark}`);
    return this._call("POST", `${this._path}/${mark}`, { all: true }, options);
  }

  _pageVisible() {
    return typeof document === "undefined" || document.visibilityState !== "hidden";
  }

  /** The IntersectionObserver of this inbox (null where there is none), and the page's
   * visibility listeners: shown again, what is on screen counts; hidden, pending ids go. */
  _seenObserver() {
    if (this._observer) return this._observer;
    if (typeof IntersectionObserver !== "function") return null;
    this._observer = new IntersectionObserver((entries) => this._onIntersections(entries), { threshold: 0.5 });
    if (typeof document !== "undefined" && typeof window !== "undefined") {
      const onVisibility = () => {
        if (document.visibilityState === "hidden") this.flushSeen({ keepalive: true }).catch(() => {});
        else this._noteOnScreen();
      };
      const onHide = () => this.flushSeen({ keepalive: true }).catch(() => {});
      this._pageListeners = [
        [document, "visibilitychange", onVisibility],
        [window, "pagehide", onHide],
      ];
      for (const [target, type, listener] of this._pageListeners) target.addEventListener(type, listener);
    }
    return this._observer;
  }

  _onIntersections(entries) {
    for (const entry of entries) {
      const watched = this._observed.get(entry.target);
      if (!watched) continue;
      // (0.49: a ratio at the threshold may come out a hair under it)
      watched.onScreen = entry.isIntersecting && entry.intersectionRatio >= 0.49;
    }
    this._noteOnScreen();
  }

  _noteOnScreen() {
    if (!this._pageVisible()) return;
    for (const [element, watched] of [...this._observed]) {
      if (!watched.onScreen) continue;
      this._unobserve(element);
      this._noteSeen(watched.id);
    }
  }

  _unobserve(element) {
    if (!this._observed.delete(element)) return;
    this._observer?.unobserve(element);
  }

  _noteSeen(id) {
    if (this._reportedSeen.has(id)) return;
    this._pendingSeen.add(id);
    if (this._seenTimer !== null) return;
    // At most one report per seenInterval: the ids noted meanwhile go together.
    const wait = Math.max(0, this._lastSeenReport + this.seenInterval - Date.now());
    this._seenTimer = setTimeout(() => {
      this._seenTimer = null;
      this._reportSeen(false).catch(() => {});
    }, wait);
  }

  async _reportSeen(keepalive) {
    const ids = [...this._pendingSeen];
    this._pendingSeen.clear();
    if (!ids.length) return null;
    for (const id of ids) this._reportedSeen.add(id);
    this._lastSeenReport = Date.now();
    try {
      const result = await this._mark("seen", ids, { keepalive });
      this._emit("seen", { ids, unknown: result.unknown, unseen: result.unseen, unread: result.unread });
      return result;
    } catch (err) {
      for (const id of ids) this._reportedSeen.delete(id); // may be observed and sent again
      this._emit("error", err);
      throw err;
    }
  }
}
