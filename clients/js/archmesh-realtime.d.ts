// Type declarations for archmesh-realtime.js (gateway/static/archmesh-realtime.js), written by
// hand next to the plain ES module they describe. tests/js type-checks a consumer against
// them with `tsc --strict`, in a browser (DOM) and in a Node (@types/node, ws) setting.

/** The client's connection states, as values: `State.CONNECTED === "connected"`. */
export declare const State: Readonly<{
  CONNECTING: "connecting";
  CONNECTED: "connected";
  RECONNECTING: "reconnecting";
  CLOSED: "closed";
}>;
/** One of the states: "connecting" | "connected" | "reconnecting" | "closed". */
export type State = (typeof State)[keyof typeof State];

/** A JWT, or a function returning one (sync or async), called on every (re)connect. */
export type TokenSource = string | (() => string | Promise<string>);

/** Returns a fresh subscription token (a JWT) for `channel`, sync or async. */
export type SubscriptionTokenProvider = (channel: string) => string | Promise<string>;

/** A place in a channel's stream: the offset of a publication and its stream's epoch. */
export interface Position {
  offset: number;
  epoch: string;
}

/** What the client needs of a WebSocket: the browser's and the `ws` package's both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  addEventListener(
    type: "open" | "message" | "error" | "close",
    // The event's type differs by implementation (the DOM's MessageEvent, ws's, ...).
    listener: (event: any) => void,
  ): void;
}

/** A WebSocket constructor: `globalThis.WebSocket`, or `WebSocket` from the `ws` package. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ArchMeshRealtimeOptions {
  /** Connection JWT, or a provider asked on every connect and reconnect. */
  token: TokenSource;
  /** Default `globalThis.WebSocket`; in Node 20, which has none, pass the `ws` package's. */
  WebSocket?: WebSocketConstructor;
  /** Milliseconds; default 500. Before reconnect attempt n (from 0) the client waits a
   * uniform random time in [0, min(backoffCap, backoffBase * 2**n)]. */
  backoffBase?: number;
  /** Milliseconds; default 20000. */
  backoffCap?: number;
  /** Reconnect attempts before giving up (state "closed"); default Infinity. */
  maxAttempts?: number;
  /** Milliseconds a request (subscribe, ping, ...) waits for its reply; default 10000. */
  requestTimeout?: number;
  /** Jitter source in [0, 1); default Math.random. */
  random?: () => number;
  /** For channels subscribed with a subscription token: asked for a fresh one ahead of the
   * token's expiry (at a random point in the last 10-30% of its life), which the client sends
   * as `sub_refresh` (on SSE: reopens the stream with it, from the positions seen); and asked
   * once more if the gateway ended the subscription at expiry, which the client then
   * resubscribes from the last offset seen. */
  subscriptionToken?: SubscriptionTokenProvider;
  /** Default ["websocket", "sse"]: the client moves to the gateway's GET /sse once
   * `sseFallbackAfter` WebSocket attempts in a row failed before they opened (a proxy refusing
   * the upgrade), and back to a WebSocket when one opens again (`websocketRetryInterval`).
   * ["websocket"] never uses SSE; ["sse"] uses nothing else. */
  transports?: Transport[];
  /** WebSocket attempts failing before they open after which SSE is used; default 2. */
  sseFallbackAfter?: number;
  /** Milliseconds; default 60000. While on SSE, a WebSocket is tried this often (and on a
   * reconnect once this long passed since the last try); when one opens the client moves to
   * it, resubscribing every channel from the last position seen. Infinity: stay on SSE. */
  websocketRetryInterval?: number;
  /** Default: `url` with http(s) for ws(s) and /sse for /ws. */
  sseUrl?: string;
  /** The fetch that reads the SSE stream; default `globalThis.fetch`. */
  fetch?: typeof fetch;
}

/** How a client reaches the gateway: a WebSocket, or a Server-Sent Events stream (which only
 * receives: ping, refresh, presence, presence_stats and history reject with code
 * "unsupported"). */
export type Transport = "websocket" | "sse";

/** Payload of the "transport" event: the client moved from `previous` to `transport`. */
export interface TransportChange {
  readonly transport: Transport;
  readonly previous: Transport;
}

/** The gateway's `connected` reply (`client.info`, what `connect()` resolves with). */
export interface ConnectionInfo {
  client_id: string;
  user_id: string;
  /** The gateway node's id. */
  node: string;
  /** The connection token's expiry, seconds since the epoch. */
  expires_at: number;
}

/** Why the client stopped for good (`client.closed`). `code` is the last WebSocket close code
 * (e.g. 4501), null when there was none (`close()`, a failure before any connection). */
export interface ClosedInfo {
  code: number | null;
  reason: string;
}

/** The `subscribed` reply; also the payload of the "subscribed" event. */
export interface Subscribed {
  channel: string;
  /** The channel's stream head when subscribed. */
  offset: number;
  epoch: string;
  /** When subscribed from a position (`since`, a resubscription after a reconnect) or told
   * unasked that history was lost: whether what was missed is replayed (true) or not (false);
   * null for a plain subscribe. */
  recovered: boolean | null;
  /** With `recovered: false`: epoch_changed, history_trimmed, unknown_position, history_lost. */
  reason: string | null;
}

/** The data a backend published: a JSON object (published through the gateway's APIs it has
 * a string `type`). */
export type PublicationData = Record<string, unknown>;

/** Payload of the "publication" event. */
export interface Publication {
  channel: string;
  /** null for a bare Redis PUBLISH, which bypasses the channel's history. */
  offset: number | null;
  epoch: string | null;
  data: PublicationData;
}

/** Payload of the "recovery_failed" event: missed messages could not be replayed; the client
 * continues live from `offset` (reload that channel's state from your backend). */
export interface RecoveryFailed {
  channel: string;
  reason: string;
  offset: number;
  epoch: string;
}

/** Why the gateway ended a subscription by itself: its subscription token expired, or a
 * `refresh` brought claims that no longer allow the channel. */
export type UnsubscribeReason = "token_expired" | "revoked";

/** Payload of the "unsubscribed" event: the gateway ended a subscription and the client does
 * not resume it (the channel has left `channels`). */
export interface Unsubscribed {
  channel: string;
  /** An UnsubscribeReason; a newer gateway may send reasons not listed there. */
  reason: UnsubscribeReason | (string & {});
}

/** Payload of the "state" event while connecting or connected. */
export interface StateChangeUp {
  state: "connecting" | "connected";
  attempt: number;
  delay: null;
  code: null;
  reason: null;
}

/** Payload of the "state" event before a reconnect attempt. */
export interface StateChangeReconnecting {
  state: "reconnecting";
  /** The attempt about to be made, from 1. */
  attempt: number;
  /** Milliseconds until that attempt. */
  delay: number;
  /** Close code of the connection that ended (null: no close code, e.g. network failure). */
  code: number | null;
  reason: string;
}

/** Payload of the "state" event once the client stopped for good. */
export interface StateChangeClosed {
  state: "closed";
  attempt: number;
  delay: null;
  code: number | null;
  reason: string;
}

/** Payload of the "state" event; narrow on `state`. */
export type StateChange = StateChangeUp | StateChangeReconnecting | StateChangeClosed;

/** The gateway's `pong` reply to `ping()`. */
export interface PongReply {
  type: "pong";
  id: number;
}

/** The gateway's `refreshed` reply to `refresh()`. */
export interface RefreshedReply {
  type: "refreshed";
  id: number;
  /** The new token's expiry, seconds since the epoch. */
  expires_at: number;
}

/** Options of `history()`. */
export interface HistoryOptions {
  /** Publications at most (the gateway cuts it to ARCHMESH_HISTORY_MAX_LIMIT); 0: the
   * position only. Default 100. */
  limit?: number;
  /** Page after (or, with `reverse`, before) this position. */
  since?: Position | null;
  /** Newest first, from the head (or from before `since`). */
  reverse?: boolean;
  /** A subscription token for the channel. */
  token?: string;
}

/** One publication of a history page. */
export interface HistoricPublication {
  offset: number;
  epoch: string;
  data: Record<string, unknown>;
}

/** The gateway's `history` reply to `history()`. */
export interface HistoryReply {
  type: "history";
  id: number;
  channel: string;
  /** In page order: oldest first, or newest first with `reverse`. An empty page with a
   * `since` of another epoch: that history is gone; `offset`/`epoch` say where it stands. */
  publications: HistoricPublication[];
  /** The channel's position. */
  offset: number;
  epoch: string;
}

/** One entry of `presence()`. */
export interface PresenceClient {
  client_id: string;
  user_id: string;
}

/** The reply of `presence_stats()`: counts, without the list. */
export interface PresenceStatsReply {
  type: "presence_stats";
  id: number;
  channel: string;
  /** Live connections subscribed to the channel, on every node. */
  connections: number;
  /** Distinct users among them. */
  users: number;
}

/** The detail of a `join` or `leave` event: a connection subscribed to, or left, a channel
 * whose prefix the gateway announces (ARCHMESH_JOIN_LEAVE). Live only, never replayed. */
export interface JoinLeave {
  channel: string;
  user_id: string;
  client_id: string;
}

/** Error codes the gateway sends in `error` replies. */
export type GatewayErrorCode =
  | "bad_json"
  | "bad_frame"
  | "frame_too_large"
  | "not_connected"
  | "already_connected"
  | "invalid_channel"
  | "forbidden"
  | "too_many_subscriptions"
  | "not_subscribed"
  | "rate_limited"
  | "invalid_token"
  | "no_subscription_token"
  | "unavailable";

/** Error codes the client itself gives: `timeout` (no reply within requestTimeout),
 * `connection_lost` (the connection dropped before the reply), `closed` (the client stopped
 * for good; see `closeCode` and `reason`), `unsubscribed` (unsubscribe() while a subscribe
 * waited), `client_error` (building the connect frame failed), `token_error` (the
 * subscriptionToken option failed or returned no token), `unknown` (an error frame without a
 * code). */
export type ClientErrorCode =
  | "timeout"
  | "connection_lost"
  | "closed"
  | "unsubscribed"
  | "client_error"
  | "token_error"
  | "unsupported"
  | "unknown";

export type RealtimeErrorCode = GatewayErrorCode | ClientErrorCode;

/** An error reply, a request that got none, or a final close (`code` "closed"). */
export declare class RealtimeError extends Error {
  constructor(
    code: string,
    message: string,
    extra?: { request?: string; channel?: string; closeCode?: number | null; reason?: string },
  );
  readonly name: "RealtimeError";
  /** A RealtimeErrorCode; a newer gateway may send codes not listed there. */
  readonly code: RealtimeErrorCode | (string & {});
  /** The request refused or lost: "subscribe", "ping", "refresh", "presence", ... */
  readonly request: string | null;
  /** The channel, for a refused subscribe. */
  readonly channel: string | null;
  /** With code "closed": the WebSocket close code (e.g. 4501), if any. */
  readonly closeCode: number | null;
  /** With code "closed": the close reason (e.g. "invalid_token"). */
  readonly reason: string | null;
}

/** Event types and their payloads (`event.detail`; what `on()` handlers receive). */
export interface ArchMeshRealtimeEventMap {
  state: StateChange;
  publication: Publication;
  subscribed: Subscribed;
  recovery_failed: RecoveryFailed;
  unsubscribed: Unsubscribed;
  /** A connection (this one too, after its `subscribed`) subscribed to the channel. */
  join: JoinLeave;
  /** A connection unsubscribed from the channel, lost it or disconnected. */
  leave: JoinLeave;
  /** Errors no request waits for: a refused resubscription, an error frame without id. */
  error: RealtimeError;
  /** The client moved to another transport (fell back to SSE, or back to a WebSocket). */
  transport: TransportChange;
}

/** The events the client dispatches: CustomEvents, the payload in `detail`. */
export type ArchMeshRealtimeEvent<K extends keyof ArchMeshRealtimeEventMap> = CustomEvent<
  ArchMeshRealtimeEventMap[K]
>;

// EventTarget's own parameter types, taken from it: the DOM and @types/node name them
// differently (only the DOM has AddEventListenerOptions and EventListenerOrEventListenerObject).
type Listener = Parameters<EventTarget["addEventListener"]>[1];
type AddListenerOptions = Parameters<EventTarget["addEventListener"]>[2];
type RemoveListenerOptions = Parameters<EventTarget["removeEventListener"]>[2];

export interface SubscribeOptions {
  /** A subscription JWT (or provider) for a session the connection token does not grant. */
  token?: TokenSource;
  /** Replay from this position instead of from the last one seen. */
  since?: Position | null;
  /** The channel's latest publication right after subscribing (and after a reconnect that
   * could not recover); left out, ARCHMESH_LATEST_ON_SUBSCRIBE decides. */
  latest?: boolean;
}

/** Whether a close with `code` (null: connection lost) calls for a reconnect: 4500-4999 and
 * 1002, 1003, 1007-1010 do not. */
export declare function shouldReconnect(code: number | null | undefined): boolean;

/** Full jitter: uniform in [0, min(cap, base * 2**attempt)]; `attempt` counts from 0. */
export declare function backoffDelay(
  attempt: number,
  base: number,
  cap: number,
  random?: () => number,
): number;

/** A connection to an ArchMesh Realtime gateway that reconnects by itself, keeps its
 * subscriptions, resumes each from the last position seen and drops duplicates. */
export declare class ArchMeshRealtime extends EventTarget {
  /** @param url ws:// or wss:// URL of the gateway's /ws endpoint. Throws a TypeError without
   * a token or a WebSocket implementation. */
  constructor(url: string, options: ArchMeshRealtimeOptions);

  readonly url: string;
  readonly backoffBase: number;
  readonly backoffCap: number;
  readonly maxAttempts: number;
  readonly requestTimeout: number;
  readonly transports: readonly Transport[];
  readonly sseFallbackAfter: number;
  readonly websocketRetryInterval: number;
  readonly sseUrl: string;
  /** The transport of the current (or last) connection attempt; "transport" tells changes. */
  readonly transport: Transport;
  /** "closed" before connect() and after the end. */
  readonly state: State;
  /** Reconnect attempts since the last successful connect. */
  readonly attempt: number;
  /** The last `connected` reply, null before the first. */
  readonly info: ConnectionInfo | null;
  /** Set when the client stopped for good. */
  readonly closed: ClosedInfo | null;
  /** Channels subscribed (kept across reconnects). */
  get channels(): string[];

  /** Last position seen on `channel`, or null. */
  position(channel: string): Position | null;

  /** Listen with a handler that receives `event.detail`; returns a function removing it. */
  on<K extends keyof ArchMeshRealtimeEventMap>(
    type: K,
    handler: (detail: ArchMeshRealtimeEventMap[K]) => void,
  ): () => void;

  addEventListener<K extends keyof ArchMeshRealtimeEventMap>(
    type: K,
    listener: (event: ArchMeshRealtimeEvent<K>) => void,
    options?: AddListenerOptions,
  ): void;
  addEventListener(type: string, listener: Listener, options?: AddListenerOptions): void;
  removeEventListener<K extends keyof ArchMeshRealtimeEventMap>(
    type: K,
    listener: (event: ArchMeshRealtimeEvent<K>) => void,
    options?: RemoveListenerOptions,
  ): void;
  removeEventListener(type: string, listener: Listener, options?: RemoveListenerOptions): void;

  /** Connect (once per client; a second call rejects with an Error). Network failures are retried with backoff; rejects with a
   * RealtimeError (code "closed", closeCode e.g. 4501) if the gateway refuses for good or
   * maxAttempts runs out. */
  connect(): Promise<ConnectionInfo>;

  /** Close for good; resolves once the state is "closed". */
  close(): Promise<void>;

  /** Subscribe (kept across reconnects). Call connect() first (else an Error); before it
   * resolves, the subscription goes with the connect frame. Rejects with a RealtimeError
   * (forbidden, invalid_channel, timeout, closed, ...) if refused or never answered. */
  subscribe(channel: string, options?: SubscribeOptions): Promise<Subscribed>;

  /** Stop receiving `channel` (no error if it was not subscribed). */
  unsubscribe(channel: string): Promise<void>;

  /** Round trip to the gateway. */
  ping(): Promise<PongReply>;

  /** Extend the connection with a new token (default: from the token provider; without a
   * provider a token is required, else a TypeError). */
  refresh(token?: string): Promise<RefreshedReply>;

  /** Who is subscribed to `channel`. */
  presence(channel: string): Promise<PresenceClient[]>;

  /** How many connections and distinct users are subscribed to `channel`. */
  presence_stats(channel: string): Promise<PresenceStatsReply>;

  /** A page of `channel`'s history without subscribing. */
  history(channel: string, options?: HistoryOptions): Promise<HistoryReply>;
}

// -- the notifier's in-app inbox ------------------------------------------------------------

/** A notification's priority. */
export type Priority = "low" | "normal" | "high" | "urgent";

/** A button on an in-app item: `url` is https or a path on the page's origin. */
export interface InboxAction {
  id: string;
  label: string;
  url: string;
}

/** An in-app notification as the inbox keeps it, with its marks. */
export interface InboxItem {
  /** The notification's id. */
  id: string;
  /** The notification type (e.g. "workflow_failed"). */
  type: string;
  title: string;
  body: string;
  priority: Priority;
  data: Record<string, unknown>;
  actions: InboxAction[];
  /** ISO 8601. */
  created_at: string;
  seen: boolean;
  read: boolean;
  archived: boolean;
}

/** How many items are not seen (the "new" count) and not read. */
export interface InboxCounts {
  unseen: number;
  unread: number;
}

/** `GET .../inbox`: a page, newest first; `next_cursor` is null on the last page. */
export interface InboxPage extends InboxCounts {
  items: InboxItem[];
  next_cursor: string | null;
}

/** What a mark of many (or all) items resolves with: the counts after it, and the ids that
 * are not in the inbox. */
export interface Marked extends InboxCounts {
  unknown: string[];
}

export interface InboxPageOptions {
  /** The `next_cursor` of the page before. */
  cursor?: string | null;
  /** 1-500, default 50. */
  limit?: number;
  /** Only these notification types (any of them). */
  types?: readonly string[];
  /** false (default): the inbox; true: the archive; "all": both. */
  archived?: boolean | "all";
}

export interface MarkOptions {
  /** The request outlives the page (a link leaving it, the page being hidden). */
  keepalive?: boolean;
}

export interface ArchMeshInboxOptions {
  /** Whose inbox. */
  user: string;
  /** The user's JWT (the one the gateway takes) or, on a backend, the API key; or a provider,
   * asked on every request and once more after a 401. */
  token: TokenSource;
  /** The notifier's address (e.g. "https://rt.example.com"); default the page's origin. */
  baseUrl?: string;
  /** Default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Milliseconds between two seen reports (ids noted meanwhile go together); default 1000. */
  seenInterval?: number;
}

/** Payload of the inbox's "seen" event: a batch of seen ids was stored. */
export interface SeenReport extends Marked {
  ids: string[];
}

/** The inbox's events and their payloads (`event.detail`). */
export interface ArchMeshInboxEventMap {
  /** The counts, from the notifier's live `inbox` and `notification` events (follow()). */
  counts: InboxCounts;
  /** A new notification, as it arrived live (not seen, not read, not archived). */
  item: InboxItem;
  /** observeSeen()'s ids were stored as seen. */
  seen: SeenReport;
  /** A seen report failed (its ids may be observed again). */
  error: InboxError;
}

/** An inbox event: a CustomEvent with the payload in `detail`. */
export type ArchMeshInboxEvent<K extends keyof ArchMeshInboxEventMap> = CustomEvent<ArchMeshInboxEventMap[K]>;

/** Codes of the inbox API's refusals. */
export type InboxApiErrorCode =
  | "unauthorized"
  | "invalid_token"
  | "forbidden"
  | "not_found"
  | "bad_json"
  | "bad_cursor"
  | "validation_error"
  | "too_large"
  | "unavailable"
  | "api_disabled"
  | "internal_error";

/** The client's own: `network_error` (no answer), `http_<status>` (an answer that is not
 * the API's JSON: `http_404` means no notifier behind that address). */
export type InboxClientErrorCode = "network_error" | `http_${number}`;

/** A refusal of the inbox API, or a request that got no answer. */
export declare class InboxError extends Error {
  constructor(code: string, message: string, extra?: { status?: number | null; fields?: object[] | null });
  readonly name: "InboxError";
  readonly code: InboxApiErrorCode | InboxClientErrorCode | (string & {});
  /** The HTTP status; null for a `network_error`. */
  readonly status: number | null;
  /** With `validation_error`: the fields refused. */
  readonly fields: object[] | null;
}

/** The notifier's in-app inbox of one user, over its HTTP API. */
export declare class ArchMeshInbox extends EventTarget {
  /** Throws a TypeError without a user, a token, or (outside a page) a baseUrl. */
  constructor(options: ArchMeshInboxOptions);

  readonly user: string;
  readonly baseUrl: string;
  readonly seenInterval: number;
  /** The latest counts known, from a live event, or from a reply when no live event arrived
   * while it was on its way (every change is published, so an event is never older than the
   * reply: render these after a call and counts never step back); null before any. */
  readonly counts: InboxCounts | null;

  /** Listen with a handler that receives `event.detail`; returns a function removing it. */
  on<K extends keyof ArchMeshInboxEventMap>(type: K, handler: (detail: ArchMeshInboxEventMap[K]) => void): () => void;
  addEventListener<K extends keyof ArchMeshInboxEventMap>(
    type: K,
    listener: (event: ArchMeshInboxEvent<K>) => void,
    options?: AddListenerOptions,
  ): void;
  addEventListener(type: string, listener: Listener, options?: AddListenerOptions): void;
  removeEventListener<K extends keyof ArchMeshInboxEventMap>(
    type: K,
    listener: (event: ArchMeshInboxEvent<K>) => void,
    options?: RemoveListenerOptions,
  ): void;
  removeEventListener(type: string, listener: Listener, options?: RemoveListenerOptions): void;

  /** A page, newest first. */
  page(options?: InboxPageOptions): Promise<InboxPage>;
  /** One item; rejects with code "not_found" if it is not in the inbox. */
  item(id: string): Promise<InboxItem>;

  /** One id: the counts after it (rejects "not_found" for an id not in the inbox); an array
   * (sent 500 at a time): the counts and the ids not in the inbox. */
  seen(id: string, options?: MarkOptions): Promise<InboxCounts>;
  seen(ids: readonly string[], options?: MarkOptions): Promise<Marked>;
  /** Read implies seen. */
  read(id: string, options?: MarkOptions): Promise<InboxCounts>;
  read(ids: readonly string[], options?: MarkOptions): Promise<Marked>;
  /** Archiving reads. */
  archive(id: string, options?: MarkOptions): Promise<InboxCounts>;
  archive(ids: readonly string[], options?: MarkOptions): Promise<Marked>;
  /** Back to the inbox, still read. */
  unarchive(id: string, options?: MarkOptions): Promise<InboxCounts>;
  unarchive(ids: readonly string[], options?: MarkOptions): Promise<Marked>;
  seenAll(options?: MarkOptions): Promise<Marked>;
  readAll(options?: MarkOptions): Promise<Marked>;
  archiveAll(options?: MarkOptions): Promise<Marked>;
  unarchiveAll(options?: MarkOptions): Promise<Marked>;

  /** Follow the live events on `user:<user>` from a realtime client: "item" and "counts".
   * Returns a function that stops following. */
  follow(client: ArchMeshRealtime): () => void;

  /** Report `id` seen once `element` was at least half on screen while the page was visible
   * (at once where there is no IntersectionObserver, or with a null element); batched, at
   * most one request per `seenInterval`, sent at once when the page is hidden. Returns a
   * function that stops observing the element. */
  observeSeen(element: object | null, id: string): () => void;
  /** Stop observing every element. */
  unobserveSeen(): void;
  /** Send the seen ids noted so far now: the stored result, or null if there were none. */
  flushSeen(options?: MarkOptions): Promise<Marked | null>;
  /** Stop observing and listening to the page, after sending what is pending. */
  close(): Promise<Marked | null>;
}

export default ArchMeshRealtime;

// Only what is exported above is public (the helper types are not).
export {};
