// A consumer of @archmesh/realtime's declarations, type-checked (`tsc --strict`, no emit) by
// client.test.mjs against the packed and installed package, once with the DOM's globals
// (browser.ts) and once with Node's (node.ts). Every exported name and member is used with
// the type it must have; each `@ts-expect-error` line must be refused, so a declaration
// that is too loose fails the check as well as one that is wrong.
import ArchMeshRealtimeDefault, {
  ArchMeshRealtime,
  RealtimeError,
  State,
  backoffDelay,
  shouldReconnect,
  type ArchMeshRealtimeEvent,
  type HistoryReply,
  type ArchMeshRealtimeEventMap,
  type ArchMeshRealtimeOptions,
  type ClientErrorCode,
  type ClosedInfo,
  type ConnectionInfo,
  type GatewayErrorCode,
  type JoinLeave,
  type PongReply,
  type Position,
  type PresenceClient,
  type PresenceStatsReply,
  type Publication,
  type PublicationData,
  type RealtimeErrorCode,
  type RecoveryFailed,
  type RefreshedReply,
  type StateChange,
  type SubscribeOptions,
  type Subscribed,
  type SubscriptionTokenProvider,
  type Transport,
  type TransportChange,
  type TokenSource,
  type UnsubscribeReason,
  type Unsubscribed,
  type WebSocketConstructor,
  type WebSocketLike,
} from "@archmesh/realtime";

/** true when A and B are the same type (not merely assignable either way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Assert<T extends true> = T;

export type Checks = [
  Assert<Equal<typeof ArchMeshRealtimeDefault, typeof ArchMeshRealtime>>,
  Assert<Equal<State, "connecting" | "connected" | "reconnecting" | "closed">>,
  Assert<Equal<typeof State.RECONNECTING, "reconnecting">>,
  Assert<Equal<TokenSource, string | (() => string | Promise<string>)>>,
  Assert<Equal<Position, { offset: number; epoch: string }>>,
  Assert<Equal<RealtimeErrorCode, GatewayErrorCode | ClientErrorCode>>,
  Assert<Equal<ArchMeshRealtimeEventMap["publication"], Publication>>,
  Assert<Equal<ArchMeshRealtimeEventMap["subscribed"], Subscribed>>,
  Assert<Equal<ArchMeshRealtimeEventMap["recovery_failed"], RecoveryFailed>>,
  Assert<Equal<ArchMeshRealtimeEventMap["state"], StateChange>>,
  Assert<Equal<ArchMeshRealtimeEventMap["error"], RealtimeError>>,
  Assert<Equal<ArchMeshRealtimeEventMap["unsubscribed"], Unsubscribed>>,
  Assert<Equal<ArchMeshRealtimeEventMap["join"], JoinLeave>>,
  Assert<Equal<ArchMeshRealtimeEventMap["leave"], JoinLeave>>,
  Assert<Equal<JoinLeave, { channel: string; user_id: string; client_id: string }>>,
  Assert<
    Equal<
      keyof ArchMeshRealtimeEventMap,
      | "state"
      | "publication"
      | "subscribed"
      | "recovery_failed"
      | "unsubscribed"
      | "join"
      | "leave"
      | "error"
      | "transport"
    >
  >,
  Assert<Equal<ArchMeshRealtimeEventMap["transport"], TransportChange>>,
  Assert<Equal<TransportChange, { readonly transport: Transport; readonly previous: Transport }>>,
  Assert<Equal<SubscriptionTokenProvider, (channel: string) => string | Promise<string>>>,
  Assert<Equal<UnsubscribeReason, "token_expired" | "revoked">>,
  Assert<Equal<Unsubscribed, { channel: string; reason: UnsubscribeReason | (string & {}) }>>,
  Assert<Equal<ArchMeshRealtimeEvent<"publication">["detail"], Publication>>,
  Assert<Equal<Publication["data"], PublicationData>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["connect"]>, Promise<ConnectionInfo>>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["close"]>, Promise<void>>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["subscribe"]>, Promise<Subscribed>>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["unsubscribe"]>, Promise<void>>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["ping"]>, Promise<PongReply>>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["refresh"]>, Promise<RefreshedReply>>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["presence"]>, Promise<PresenceClient[]>>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["presence_stats"]>, Promise<PresenceStatsReply>>>,
  Assert<
    Equal<
      PresenceStatsReply,
      { type: "presence_stats"; id: number; channel: string; connections: number; users: number }
    >
  >,
  Assert<Equal<ReturnType<ArchMeshRealtime["position"]>, Position | null>>,
  Assert<Equal<ArchMeshRealtime["info"], ConnectionInfo | null>>,
  Assert<Equal<ArchMeshRealtime["closed"], ClosedInfo | null>>,
  Assert<Equal<ArchMeshRealtime["state"], State>>,
  Assert<Equal<ArchMeshRealtime["channels"], string[]>>,
  Assert<Equal<ConnectionInfo, { client_id: string; user_id: string; node: string; expires_at: number }>>,
  Assert<Equal<PresenceClient, { client_id: string; user_id: string }>>,
  Assert<Equal<SubscribeOptions, { token?: TokenSource; since?: Position | null; latest?: boolean }>>,
  Assert<Equal<ReturnType<ArchMeshRealtime["history"]>, Promise<HistoryReply>>>,
  Assert<Equal<ClosedInfo, { code: number | null; reason: string }>>,
  Assert<Equal<Publication, { channel: string; offset: number | null; epoch: string | null; data: PublicationData }>>,
  Assert<Equal<PublicationData, Record<string, unknown>>>,
  Assert<
    Equal<
      Subscribed,
      { channel: string; offset: number; epoch: string; recovered: boolean | null; reason: string | null }
    >
  >,
  Assert<Equal<RecoveryFailed, { channel: string; reason: string; offset: number; epoch: string }>>,
  Assert<
    Equal<
      StateChange,
      | { state: "connecting" | "connected"; attempt: number; delay: null; code: null; reason: null }
      | { state: "reconnecting"; attempt: number; delay: number; code: number | null; reason: string }
      | { state: "closed"; attempt: number; delay: null; code: number | null; reason: string }
    >
  >,
  Assert<Equal<PongReply, { type: "pong"; id: number }>>,
  Assert<Equal<RefreshedReply, { type: "refreshed"; id: number; expires_at: number }>>,
  Assert<
    Equal<
      Pick<RealtimeError, "name" | "code" | "request" | "channel" | "closeCode" | "reason">,
      {
        readonly name: "RealtimeError";
        readonly code: RealtimeErrorCode | (string & {});
        readonly request: string | null;
        readonly channel: string | null;
        readonly closeCode: number | null;
        readonly reason: string | null;
      }
    >
  >,
  Assert<
    Equal<
      ArchMeshRealtimeOptions,
      {
        token: TokenSource;
        WebSocket?: WebSocketConstructor;
        backoffBase?: number;
        backoffCap?: number;
        maxAttempts?: number;
        requestTimeout?: number;
        random?: () => number;
        subscriptionToken?: SubscriptionTokenProvider;
        transports?: Transport[];
        sseFallbackAfter?: number;
        websocketRetryInterval?: number;
        sseUrl?: string;
        fetch?: typeof fetch;
      }
    >
  >,
];

// -- values ---------------------------------------------------------------------------------

export const connected: "connected" = State.CONNECTED;
// @ts-expect-error State is frozen
State.CONNECTED = "connected";
// @ts-expect-error not a state
export const opened: State = "open";

export const again: boolean = shouldReconnect(4000) && shouldReconnect(null) && shouldReconnect(undefined);
export const delay: number = backoffDelay(0, 500, 20000) + backoffDelay(3, 500, 20000, () => 0.5);
// @ts-expect-error the jitter source returns a number
backoffDelay(0, 500, 20000, () => "0.5");
// @ts-expect-error a close code is a number
shouldReconnect("4000");

// -- construction ---------------------------------------------------------------------------

declare const SomeWebSocket: WebSocketConstructor;
export const options: ArchMeshRealtimeOptions = {
  token: async () => "jwt",
  WebSocket: SomeWebSocket,
  backoffBase: 500,
  backoffCap: 20000,
  maxAttempts: Infinity,
  requestTimeout: 10000,
  random: Math.random,
  subscriptionToken: async (channel) => `jwt-for-${channel}`,
};
export const client = new ArchMeshRealtime("wss://rt.example.com/ws", options);
new ArchMeshRealtime("ws://x/ws", { token: "jwt" });
new ArchMeshRealtime("ws://x/ws", { token: () => "jwt" });
// @ts-expect-error a token is required
new ArchMeshRealtime("ws://x/ws", {});
// @ts-expect-error options are required (the token)
new ArchMeshRealtime("ws://x/ws");
// @ts-expect-error the token provider returns a string
new ArchMeshRealtime("ws://x/ws", { token: () => 42 });
// @ts-expect-error milliseconds are numbers
new ArchMeshRealtime("ws://x/ws", { token: "jwt", backoffBase: "500" });
// @ts-expect-error no such option
new ArchMeshRealtime("ws://x/ws", { token: "jwt", reconnect: false });
new ArchMeshRealtime("ws://x/ws", { token: "jwt", subscriptionToken: (channel: string) => channel });
// @ts-expect-error the subscription token provider returns a string
new ArchMeshRealtime("ws://x/ws", { token: "jwt", subscriptionToken: () => 42 });

export const socket: WebSocketLike = new SomeWebSocket("ws://x/ws");
export const target: EventTarget = client;

// -- requests -------------------------------------------------------------------------------

export async function use(c: ArchMeshRealtime): Promise<string> {
  const info = await c.connect();
  const who: string = `${info.client_id} ${info.user_id} ${info.node} ${info.expires_at.toFixed()}`;
  const state: State = c.state;
  const attempt: number = c.attempt + c.backoffBase + c.backoffCap + c.maxAttempts + c.requestTimeout;
  const url: string = c.url;
  if (c.closed) {
    const code: number | null = c.closed.code;
    const reason: string = c.closed.reason;
    void [code, reason];
  }
  // @ts-expect-error the state is the client's to set
  c.state = "connected";
  // @ts-expect-error channels is read-only
  c.channels = [];

  const sub = await c.subscribe("session:s1");
  const recovered: boolean | null = sub.recovered;
  const why: string | null = sub.reason;
  const head: Position = { offset: sub.offset, epoch: sub.epoch };
  await c.subscribe("session:s2", { token: "jwt", since: head });
  await c.subscribe("session:s3", { token: async () => "jwt", since: null });
  // @ts-expect-error a position has an epoch
  await c.subscribe("session:s2", { since: { offset: 3 } });
  // @ts-expect-error a channel is a string
  await c.subscribe(42);
  await c.subscribe("session:s1", { latest: true });
  // @ts-expect-error latest is a boolean
  await c.subscribe("session:s1", { latest: "yes" });
  const page: HistoryReply = await c.history("session:s1", { limit: 5, since: head, reverse: true });
  const firstOffset: number | undefined = page.publications[0]?.offset;
  await c.history("session:s1");
  // @ts-expect-error limit is a number
  await c.history("session:s1", { limit: "5" });
  const last = c.position("session:s1");
  const offset: number | undefined = last?.offset;
  await c.unsubscribe("session:s1");

  const pong = await c.ping();
  const pongType: "pong" = pong.type;
  const pongId: number = pong.id;
  const refreshed = await c.refresh();
  await c.refresh("jwt");
  const expires: number = refreshed.expires_at;
  // @ts-expect-error a token is a string
  await c.refresh(42);
  const present = await c.presence("session:s1");
  const users: string[] = present.map((p) => `${p.client_id}:${p.user_id}`);
  const counted = await c.presence_stats("session:s1");
  const many: number = counted.connections + counted.users;
  // @ts-expect-error a channel is a string
  await c.presence_stats(7);
  await c.close();
  void [state, attempt, url, recovered, why, offset, pongType, pongId, expires, users, many];
  return `${who} ${c.channels.join(",")}`;
}

// -- events ---------------------------------------------------------------------------------

export function listen(c: ArchMeshRealtime): Array<() => void> {
  const offs = [
    c.on("state", (change) => {
      if (change.state === "reconnecting") {
        const wait: number = change.delay;
        const reason: string = change.reason;
        const code: number | null = change.code;
        void [wait, reason, code, change.attempt];
      } else if (change.state === "closed") {
        const reason: string = change.reason;
        const code: number | null = change.code;
        // @ts-expect-error no delay once closed
        const wait: number = change.delay;
        void [reason, code, wait];
      } else {
        const up: "connecting" | "connected" = change.state;
        const none: null = change.reason;
        void [up, none];
      }
    }),
    c.on("publication", (p) => {
      const kind: unknown = p.data["type"];
      const at: number | null = p.offset;
      const epoch: string | null = p.epoch;
      void [p.channel.length, kind, at, epoch];
    }),
    c.on("subscribed", (s) => void s.channel.length),
    c.on("recovery_failed", (f) => void [f.channel, f.reason, f.offset.toFixed(), f.epoch]),
    c.on("join", (j) => void [j.channel.length, j.user_id.length, j.client_id.length]),
    c.on("leave", (l) => {
      const who: string = `${l.user_id}/${l.client_id}`;
      // @ts-expect-error a leave event has no offset
      void [who, l.channel, l.offset];
    }),
    c.on("unsubscribed", (u) => {
      const channel: string = u.channel;
      const reason: string = u.reason;
      const ended: boolean = u.reason === "revoked" || u.reason === "token_expired";
      // @ts-expect-error a reason is a string
      const count: number = u.reason;
      // @ts-expect-error an unsubscribed event has no offset
      void [channel, reason, ended, count, u.offset];
    }),
    c.on("error", (err) => void err.code),
  ];
  // @ts-expect-error not an event of the client
  c.on("message", () => undefined);
  // @ts-expect-error a publication has no stage of its own (it is in data)
  c.on("publication", (p) => p.stage);

  const onPublication = (event: ArchMeshRealtimeEvent<"publication">): void => {
    const detail: Publication = event.detail;
    const type: string = event.type;
    void [detail, type];
  };
  c.addEventListener("publication", onPublication);
  c.removeEventListener("publication", onPublication);
  c.addEventListener("state", (event) => void event.detail.state, { once: true });
  c.addEventListener("anything", (event) => void event.type);
  // @ts-expect-error a state event's detail is not a publication
  c.addEventListener("state", (event: ArchMeshRealtimeEvent<"publication">) => void event);
  return offs;
}

// -- errors ---------------------------------------------------------------------------------

export function describe(err: unknown): string | null {
  if (!(err instanceof RealtimeError)) return null;
  const plain: Error = err;
  const name: "RealtimeError" = err.name;
  const code: string = err.code;
  const request: string | null = err.request;
  const channel: string | null = err.channel;
  if (err.code === "closed") return `${err.closeCode ?? "-"} ${err.reason ?? ""}`;
  if (err.code === "forbidden") return channel;
  if (err.code === "no_subscription_token" || err.code === "token_error") return channel;
  // @ts-expect-error the error's fields are read-only
  err.code = "timeout";
  void [plain, name, request];
  return code;
}

new RealtimeError("timeout", "ping: no reply", { request: "ping" });
new RealtimeError("closed", "connection closed", { closeCode: 4501, reason: "invalid_token" });
new RealtimeError("forbidden", "subscribe refused", { request: "subscribe", channel: "session:x" });
// @ts-expect-error the code is a string
new RealtimeError(4501, "closed");

// -- transports -----------------------------------------------------------------------------

export function onSse(token: string): Transport {
  const c = new ArchMeshRealtime("wss://rt.example/ws", {
    token,
    transports: ["websocket", "sse"],
    sseFallbackAfter: 3,
    websocketRetryInterval: 120000,
    sseUrl: "https://rt.example/sse",
    fetch: globalThis.fetch,
  });
  c.on("transport", (move) => {
    const now: Transport = move.transport;
    // @ts-expect-error a move is read-only
    move.previous = now;
  });
  // @ts-expect-error only "websocket" and "sse" are transports
  new ArchMeshRealtime("wss://rt.example/ws", { token, transports: ["polling"] });
  // @ts-expect-error the transport is read-only
  c.transport = "sse";
  const list: readonly Transport[] = c.transports;
  void list;
  return c.transport;
}
