// A consumer of the inbox client's declarations (ArchMeshInbox, InboxError), type-checked with
// api.ts in the browser and the Node setting: each `@ts-expect-error` line must be refused.
import {
  ArchMeshInbox,
  ArchMeshRealtime,
  InboxError,
  type ArchMeshInboxEvent,
  type ArchMeshInboxEventMap,
  type ArchMeshInboxOptions,
  type InboxAction,
  type InboxApiErrorCode,
  type InboxClientErrorCode,
  type InboxCounts,
  type InboxItem,
  type InboxPage,
  type InboxPageOptions,
  type Marked,
  type MarkOptions,
  type Priority,
  type SeenReport,
  type TokenSource,
} from "@archmesh/realtime";

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Assert<T extends true> = T;

export type Checks = [
  Assert<Equal<InboxCounts, { unseen: number; unread: number }>>,
  Assert<Equal<Priority, "low" | "normal" | "high" | "urgent">>,
  Assert<Equal<InboxAction, { id: string; label: string; url: string }>>,
  Assert<Equal<InboxPage["items"], InboxItem[]>>,
  Assert<Equal<InboxPage["next_cursor"], string | null>>,
  Assert<Equal<Marked["unknown"], string[]>>,
  Assert<Equal<SeenReport["ids"], string[]>>,
  Assert<Equal<ArchMeshInboxOptions["token"], TokenSource>>,
  Assert<Equal<InboxPageOptions["archived"], boolean | "all" | undefined>>,
  Assert<Equal<MarkOptions, { keepalive?: boolean }>>,
  Assert<Equal<keyof ArchMeshInboxEventMap, "counts" | "item" | "seen" | "error">>,
  Assert<Equal<ArchMeshInboxEventMap["counts"], InboxCounts>>,
  Assert<Equal<ArchMeshInboxEventMap["item"], InboxItem>>,
  Assert<Equal<ArchMeshInboxEventMap["seen"], SeenReport>>,
  Assert<Equal<ArchMeshInboxEventMap["error"], InboxError>>,
  Assert<Equal<ArchMeshInboxEvent<"counts">["detail"], InboxCounts>>,
  Assert<Equal<ReturnType<ArchMeshInbox["page"]>, Promise<InboxPage>>>,
  Assert<Equal<ReturnType<ArchMeshInbox["item"]>, Promise<InboxItem>>>,
  Assert<Equal<ReturnType<ArchMeshInbox["readAll"]>, Promise<Marked>>>,
  Assert<Equal<ReturnType<ArchMeshInbox["follow"]>, () => void>>,
  Assert<Equal<ReturnType<ArchMeshInbox["flushSeen"]>, Promise<Marked | null>>>,
  Assert<Equal<ArchMeshInbox["counts"], InboxCounts | null>>,
  Assert<Equal<InboxError["code"], InboxApiErrorCode | InboxClientErrorCode | (string & {})>>,
];

export const inbox = new ArchMeshInbox({ user: "ada", token: async () => "jwt", baseUrl: "https://rt.example" });
new ArchMeshInbox({ user: "ada", token: "api-key", baseUrl: "https://rt.example", seenInterval: 500, fetch });
// @ts-expect-error whose inbox is required
new ArchMeshInbox({ token: "jwt" });
// @ts-expect-error a token is required
new ArchMeshInbox({ user: "ada" });
// @ts-expect-error the token provider returns a string
new ArchMeshInbox({ user: "ada", token: () => 42 });
// @ts-expect-error no such option
new ArchMeshInbox({ user: "ada", token: "jwt", poll: true });

export async function use(box: ArchMeshInbox, client: ArchMeshRealtime): Promise<string[]> {
  const first = await box.page({ limit: 20, types: ["workflow_failed"], archived: "all" });
  const next = first.next_cursor ? await box.page({ cursor: first.next_cursor }) : first;
  await box.page();
  // @ts-expect-error archived is a boolean or "all"
  await box.page({ archived: "yes" });
  // @ts-expect-error limit is a number
  await box.page({ limit: "20" });
  const item: InboxItem = await box.item(next.items[0]?.id ?? "x");
  const flags: boolean[] = [item.seen, item.read, item.archived];
  const one: InboxCounts = await box.read(item.id);
  // @ts-expect-error one id resolves with the counts only
  void (await box.read(item.id)).unknown;
  const many: Marked = await box.seen([item.id, "other"], { keepalive: true });
  const unknown: string[] = many.unknown;
  await box.archive([item.id]);
  await box.unarchive(item.id);
  const all: Marked[] = [await box.seenAll(), await box.readAll(), await box.archiveAll(), await box.unarchiveAll()];
  // @ts-expect-error ids are strings
  await box.seen([1, 2]);

  const stop = box.follow(client);
  const offs = [
    box.on("counts", ({ unseen, unread }) => void (unseen + unread)),
    box.on("item", (fresh) => void [fresh.id, fresh.type, fresh.priority, fresh.actions.map((a) => a.url)]),
    box.on("seen", (report) => void [report.ids.length, report.unknown, report.unseen]),
    box.on("error", (err) => void [err.code, err.status, err.fields]),
  ];
  // @ts-expect-error not an event of the inbox
  box.on("publication", () => undefined);
  box.addEventListener("counts", (event) => void event.detail.unread);
  const unobserve = box.observeSeen(null, item.id);
  unobserve();
  box.unobserveSeen();
  const sent: Marked | null = await box.flushSeen({ keepalive: true });
  await box.close();
  stop();
  for (const off of offs) off();
  void [flags, one, unknown, all, sent];
  return [box.user, box.baseUrl, String(box.seenInterval)];
}

export function explain(err: unknown): string | null {
  if (!(err instanceof InboxError)) return null;
  const status: number | null = err.status;
  if (err.code === "not_found" || err.code === "bad_cursor" || err.code === "network_error") return err.code;
  if (err.code === "http_404") return "no notifier here";
  // @ts-expect-error the error's fields are read-only
  err.code = "forbidden";
  void status;
  return err.message;
}
