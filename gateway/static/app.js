// The ArchMesh Realtime page: a workflow view, a notification inbox and preferences, and the
// connection's state. Plain DOM and the project's client (archmesh-realtime.js); no build step.
//
// Tokens: in development mode (`archmesh-rt dev`) the page mints them for the user typed in the
// header through POST /api/dev/token. Anywhere else the host application provides one, either
// as `window.ARCHMESH_TOKEN` (a string, or a function returning a string or a promise of one,
// called on every reconnect) set before this module runs, or in the URL fragment:
// `/#token=<JWT>&session=<id>` (a fragment never reaches the server or its logs; the page
// removes it from the address bar at once).
import { ArchMeshInbox, ArchMeshRealtime } from "/static/archmesh-realtime.js";

const CONFIG = JSON.parse(document.getElementById("archmesh-config")?.textContent || "{}");
const DEV = CONFIG.dev === true;
const CHANNELS = ["in_app", "email", "push", "sms"];
const CHANNEL_LABELS = { in_app: "In-app", email: "Email", push: "Push", sms: "SMS" };
const DEFAULT_SWITCHES = { in_app: true, email: true, push: true, sms: false };
const KNOWN_TYPES = ["workflow_review_required", "workflow_failed", "workflow_completed"];
const ID = /^[A-Za-z0-9._@|+=-]{1,128}$/;
const TYPE = /^[a-z0-9][a-z0-9_.:-]{0,99}$/;
const MAX_TIMELINE = 50;
const PAGE_SIZE = 20;
const TOAST_MS = 8000;

const $ = (id) => document.getElementById(id);

const page = {
  user: null,
  client: null,
  inboxClient: null, // the SDK's ArchMeshInbox for the signed-in user
  tokenSource: null, // () => Promise<string>
  sessions: new Map(), // session id -> {updates: [], note: string}
  selected: null,
  inbox: new Map(), // notification id -> item, newest first (the view's pages and live ones)
  unread: 0,
  unseen: 0,
  cursor: null, // the next page's, or null after the last
  archivedView: false,
  prefs: null,
  notifier: true, // whether this origin serves the notifier API
  // Reconnect bookkeeping: positions when the connection dropped, outcomes after it came back.
  reconnects: 0,
  before: new Map(),
  recovery: null,
};

// -- small DOM helpers -------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function humanize(name) {
  const text = String(name).replace(/[_.:-]+/g, " ").trim();
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function timeOf(value) {
  const date = value ? new Date(value) : new Date();
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

// -- tokens ------------------------------------------------------------------------------

function fragmentParams() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    // Out of the address bar, the history and any bookmark.
    history.replaceState(null, "", location.pathname + location.search);
  }
  return params;
}

function claimsOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(data.error?.message || `${path}: HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

/** Development: a cached token for `user` that lists every open session, re-minted near expiry. */
function devTokenSource(user) {
  let cached = null;
  let sessionsKey = "";
  return async () => {
    const sessions = [...page.sessions.keys()].slice(0, 50);
    const key = sessions.join(",");
    if (!cached || key !== sessionsKey || cached.expires_at * 1000 - Date.now() < 60000) {
      cached = await postJson("/api/dev/token", { user_id: user, sessions });
      sessionsKey = key;
    }
    return cached.token;
  };
}

function hostTokenSource(fragmentToken) {
  const provided = window.ARCHMESH_TOKEN;
  if (typeof provided === "function") return async () => provided();
  const token = typeof provided === "string" && provided ? provided : fragmentToken;
  return token ? async () => token : null;
}

// -- connection state --------------------------------------------------------------------

function showConnection(state, text, recovery = "") {
  const node = $("connection");
  node.dataset.state = state;
  node.dataset.recovery = recovery;
  $("connection-text").textContent = text;
}

function onState({ state, attempt, code, reason }) {
  const client = page.client;
  if (state === "connecting") {
    showConnection("connecting", "Connecting…");
  } else if (state === "reconnecting") {
    if (attempt === 1) {
      // Remember where every channel stood, to tell afterwards what recovery replayed.
      page.before = new Map();
      const own = client.info ? `user:${client.info.user_id}` : null;
      for (const channel of [...client.channels, own]) {
        const position = channel && client.position(channel);
        if (position) page.before.set(channel, position);
      }
    }
    showConnection("reconnecting", `Reconnecting (attempt ${attempt}${reason ? `, ${reason}` : ""})…`);
  } else if (state === "connected") {
    const node = client.info?.node ?? "gateway";
    if (attempt === 0 && page.before.size) {
      page.reconnects += 1;
      page.recovery = { node, pending: new Set(page.before.keys()), missed: 0, failed: [] };
      showConnection("connected", `Reconnected to ${node}, recovering…`, "pending");
      refreshInbox();
    } else {
      showConnection("connected", `Connected to ${node}`);
    }
  } else if (state === "closed") {
    showConnection("closed", `Disconnected${code ? ` (${code})` : ""}: ${reason ?? "closed"}`);
  }
}

function onSubscribed({ channel, offset, epoch, recovered, reason }) {
  const recovery = page.recovery;
  if (!recovery || !recovery.pending.has(channel) || recovered === null) return;
  recovery.pending.delete(channel);
  const before = page.before.get(channel);
  if (recovered) {
    // A position with no epoch is "from the start": everything up to the head was replayed.
    if (before && (before.epoch === epoch || before.epoch === "")) {
      recovery.missed += Math.max(0, offset - before.offset);
    }
  } else {
    recovery.failed.push(`${channel} (${reason ?? "unknown"})`);
  }
  if (recovery.pending.size) return;
  page.before = new Map();
  page.recovery = null;
  if (recovery.failed.length) {
    showConnection(
      "connected",
      `Reconnected to ${recovery.node}: not recovered ${recovery.failed.join(", ")}; reloaded`,
      "not_recovered",
    );
  } else {
    const missed = recovery.missed === 1 ? "1 missed message" : `${recovery.missed} missed messages`;
    showConnection("connected", `Reconnected to ${recovery.node}: recovered ${missed}`, "recovered");
  }
}

// -- workflow view -----------------------------------------------------------------------

function sessionOf(id) {
  let session = page.sessions.get(id);
  if (!session) {
    session = { updates: [], note: "" };
    page.sessions.set(id, session);
  }
  return session;
}

function renderSessionPicker() {
  const select = $("session-select");
  select.replaceChildren(
    ...[...page.sessions.keys()].map((id) => el("option", { value: id, text: id })),
  );
  if (page.selected) select.value = page.selected;
}

function renderWorkflow() {
  const session = page.selected ? page.sessions.get(page.selected) : null;
  const last = session?.updates.at(-1) ?? null;
  const status = last?.status ?? "idle";
  const percent = last ? Math.round(Math.min(1, Math.max(0, Number(last.progress))) * 100) : 0;
  $("workflow").dataset.status = status;
  $("wf-stage").textContent = last ? humanize(last.stage) : "No updates yet";
  const badge = $("wf-status");
  badge.dataset.status = status;
  badge.textContent = humanize(status);
  const bar = $("wf-progress");
  bar.setAttribute("aria-valuenow", String(percent));
  bar.setAttribute("aria-valuetext", last ? `${percent}%, ${humanize(last.stage)}` : "0%");
  bar.querySelector(".progress-fill").style.width = `${percent}%`;
  $("wf-percent").textContent = `${percent}%`;
  $("wf-message").textContent = last?.message ?? "";
  $("session-note").textContent = session?.note ?? "";
  const items = (session?.updates ?? []).slice(-MAX_TIMELINE).reverse();
  $("timeline").replaceChildren(
    ...items.map((update) =>
      el(
        "li",
        { "data-status": update.status ?? "running" },
        el("time", { datetime: update.timestamp ?? "", text: timeOf(update.timestamp) }),
        el("span", { class: "tl-stage", text: humanize(update.stage) }),
        el("span", { class: "tl-status", text: humanize(update.status ?? "running") }),
        el("span", { class: "tl-progress", text: `${Math.round(Number(update.progress) * 100)}%` }),
      ),
    ),
  );
}

function onWorkflowUpdate(sessionId, data) {
  const session = sessionOf(sessionId);
  session.updates.push(data);
  if (session.updates.length > MAX_TIMELINE * 2) session.updates.splice(0, MAX_TIMELINE);
  if (data.status === "completed" || data.status === "failed") $("simulate").disabled = false;
  if (sessionId === page.selected) renderWorkflow();
}

/** Subscribe from the start of the session's history, so the view shows its current state. */
async function watchSession(id) {
  const session = sessionOf(id);
  session.updates = [];
  session.note = "";
  try {
    await page.client.subscribe(`session:${id}`, { since: { offset: 0, epoch: "" } });
  } catch (err) {
    session.note =
      err.code === "forbidden"
        ? `Your token does not allow watching session ${id}.`
        : `Cannot watch session ${id}: ${err.message}`;
  }
  if (id === page.selected) renderWorkflow();
}

async function openSession(id) {
  const known = page.sessions.has(id);
  sessionOf(id);
  page.selected = id;
  renderSessionPicker();
  renderWorkflow();
  rememberDev();
  if (known || !page.client) return;
  // In development the next token lists the new session: hand it to the live connection.
  if (DEV) await page.client.refresh().catch(() => {});
  await watchSession(id);
}

function onRecoveryFailed({ channel }) {
  if (!channel.startsWith("session:")) return;
  // What the page had may have gaps: read again what the gateway still holds.
  const id = channel.slice("session:".length);
  watchSession(id).then(() => {
    sessionOf(id).note = "Some updates were lost while disconnected; showing what is still kept.";
    if (id === page.selected) renderWorkflow();
  });
}

async function simulate() {
  if (!page.selected) return;
  const button = $("simulate");
  button.disabled = true;
  try {
    await postJson("/api/dev/simulate", { session_id: page.selected, user_id: page.user });
    setTimeout(() => (button.disabled = false), 10000);
  } catch (err) {
    button.disabled = false;
    $("session-note").textContent = `Simulation refused: ${err.message}`;
  }
}

// -- notifier API: preferences (the inbox goes through the SDK's ArchMeshInbox) -----------

async function api(method, path, body) {
  const token = await page.tokenSource();
  const response = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${token}`,
      ...(body === undefined ? {} : { "Content-Type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  return { ok: response.ok, status: response.status, data };
}

function userPath(suffix) {
  return `/api/users/${encodeURIComponent(page.user)}/${suffix}`;
}

function notifierMissing(result) {
  // A JSON 404 is the notifier's answer; a bare one means no notifier behind this origin.
  return result.status === 404 && !result.data?.error;
}

function notifierMissingError(err) {
  // The SDK's InboxError for an answer that is not the API's JSON.
  return err?.code === "http_404";
}

function setCounts({ unread, unseen }) {
  if (unread !== undefined) page.unread = Math.max(0, Number(unread) || 0);
  if (unseen !== undefined) page.unseen = Math.max(0, Number(unseen) || 0);
  page.unseen = Math.min(page.unseen, page.unread);
  const badge = $("badge");
  badge.textContent = String(page.unread);
  badge.dataset.count = String(page.unread);
  $("badge-label").textContent = `${page.unread} unread`;
  $("unseen").textContent = page.unseen ? `${page.unseen} new` : "";
  $("unseen").dataset.count = String(page.unseen);
  $("read-all").disabled = page.unread === 0;
  document.title = page.unread ? `(${page.unread}) ArchMesh Realtime` : "ArchMesh Realtime";
}

function isRead(item) {
  return item.read === true || Boolean(item.read_at);
}

function inView(item) {
  return page.archivedView === (item.archived === true);
}

function renderInbox() {
  page.inboxClient?.unobserveSeen();
  const items = [...page.inbox.values()].filter(inView);
  $("more").hidden = !page.cursor;
  for (const tab of document.querySelectorAll("#inbox-views button")) {
    tab.setAttribute("aria-pressed", String((tab.dataset.view === "archived") === page.archivedView));
  }
  $("archive-all").hidden = page.archivedView;
  if (!items.length) {
    const text = page.archivedView ? "No archived notifications." : "No notifications yet.";
    $("inbox").replaceChildren(el("li", { class: "empty", text }));
    return;
  }
  const nodes = items.map(inboxEntry);
  $("inbox").replaceChildren(...nodes);
  // Seen: the SDK reports an item once half of it was on screen while the page was visible,
  // in batches (and what is pending when the page is hidden).
  for (const node of nodes) {
    if (node.dataset.seen === "false") page.inboxClient?.observeSeen(node, node.dataset.id);
  }
}

// An action's link: https, or a path on this origin (the notifier refuses anything else; the
// page checks again so a link can never run script).
function safeUrl(url) {
  return typeof url === "string" && (/^https:\/\/[^\s\\]+$/i.test(url) || /^\/(?!\/)[^\s\\]*$/.test(url));
}

function actionLink(item, action, title) {
  if (!safeUrl(action.url)) return null;
  const external = action.url.startsWith("https://");
  return el("a", {
    class: "action button",
    href: action.url,
    "data-action": action.id,
    target: external ? "_blank" : null,
    rel: external ? "noopener noreferrer" : null,
    "aria-label": `${action.label} (“${title}”)`,
    text: action.label,
    // Acting on an item reads it; keepalive lets the call finish if the link leaves the page.
    onclick: () => markRead(item.id, { keepalive: true, focus: false }),
  });
}

function inboxEntry(item) {
  const read = isRead(item);
  const title = item.title ?? humanize(item.type ?? item.notification_type ?? "notification");
  const type = item.type ?? item.notification_type ?? "";
  const actions = (Array.isArray(item.actions) ? item.actions : []).map((action) => actionLink(item, action, title)).filter(Boolean);
  const archived = item.archived === true;
  return el(
    "li",
    {
      class: read ? "item read" : "item unread",
      "data-id": item.id,
      "data-priority": item.priority,
      "data-seen": String(item.seen === true || read),
    },
    el("span", { class: "unread-dot", "aria-hidden": "true" }),
    el(
      "div",
      { class: "item-body" },
      el("p", { class: "item-title" }, el("strong", { text: title }), read ? null : el("span", { class: "visually-hidden", text: " (unread)" })),
      item.body ? el("p", { class: "item-text", text: item.body }) : null,
      el("p", {
        class: "item-meta",
        text: [humanize(type), item.priority, timeOf(item.created_at)].filter(Boolean).join(" · "),
      }),
      actions.length ? el("p", { class: "item-actions" }, ...actions) : null,
    ),
    el(
      "div",
      { class: "item-controls" },
      read
        ? null
        : el("button", {
            type: "button",
            class: "mark-read",
            "aria-label": `Mark “${title}” read`,
            text: "Mark read",
            onclick: () => markRead(item.id),
          }),
      el("button", {
        type: "button",
        class: archived ? "unarchive" : "archive",
        "aria-label": `${archived ? "Unarchive" : "Archive"} “${title}”`,
        text: archived ? "Unarchive" : "Archive",
        onclick: () => archive(item.id, !archived),
      }),
    ),
  );
}

// -- seen: reported by the SDK (observeSeen above); its "seen" event brings the stored result.

function onSeen({ ids, unseen, unread }) {
  for (const id of ids) {
    const item = page.inbox.get(id);
    if (item) item.seen = true;
    const node = $("inbox").querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (node) node.dataset.seen = "true";
  }
  setCounts(page.inboxClient?.counts ?? { unseen, unread });
}

// -- loading, paging and marking ---------------------------------------------------------

function inboxPage(cursor) {
  return page.inboxClient.page({ limit: PAGE_SIZE, archived: page.archivedView, cursor });
}

async function refreshInbox() {
  if (!page.user || !page.inboxClient) return;
  let result;
  try {
    result = await inboxPage(null);
  } catch (err) {
    if (notifierMissingError(err)) {
      page.notifier = false;
      $("inbox-note").textContent =
        "This address serves no notifier API: live notifications still appear, the stored inbox does not.";
      $("prefs-panel").hidden = true;
      return;
    }
    $("inbox-note").textContent = `Inbox unavailable: ${err.message}`;
    return;
  }
  page.notifier = true;
  $("inbox-note").textContent = "";
  $("prefs-panel").hidden = false;
  page.inbox = new Map((result.items ?? []).map((item) => [item.id, item]));
  page.cursor = result.next_cursor ?? null;
  setCounts(page.inboxClient.counts ?? result); // never older than a live event
  renderInbox();
}

async function loadMore() {
  if (!page.cursor || !page.inboxClient) return;
  const button = $("more");
  button.disabled = true;
  let result;
  try {
    result = await inboxPage(page.cursor);
  } catch (err) {
    $("inbox-note").textContent = `Could not load more: ${err.message}`;
    return;
  } finally {
    button.disabled = false;
  }
  const first = (result.items ?? []).find((item) => !page.inbox.has(item.id));
  for (const item of result.items ?? []) if (!page.inbox.has(item.id)) page.inbox.set(item.id, item);
  page.cursor = result.next_cursor ?? null;
  setCounts(page.inboxClient.counts ?? result);
  renderInbox();
  // Keyboard users continue where the new items start.
  const target = first && $("inbox").querySelector(`li[data-id="${CSS.escape(first.id)}"] button`);
  (target ?? (page.cursor ? button : $("inbox"))).focus();
}

// After a call: the SDK's latest counts (the reply's, unless a live event came meanwhile, which
// is never older), so the badge never steps back to a reply overtaken by another tab's change.
function showClientCounts() {
  if (page.inboxClient?.counts) setCounts(page.inboxClient.counts);
}

function failed(what, err) {
  $("inbox-note").textContent = `Could not ${what}: ${err.message}`;
}

async function markRead(id, options = {}) {
  if (!page.inboxClient) return; // not signed in yet
  if (options.keepalive) {
    // A link may be leaving the page: the request must outlive it; the pushed counts follow.
    page.inboxClient.read(id, { keepalive: true }).catch(() => {});
    return;
  }
  const item = page.inbox.get(id);
  try {
    await page.inboxClient.read(id);
  } catch (err) {
    return failed("mark read", err);
  }
  if (item) Object.assign(item, { read: true, seen: true });
  showClientCounts();
  renderInbox();
  if (options.focus === false) return;
  // Keep keyboard users in the list: focus the next unread item's button, or the list.
  const next = $("inbox").querySelector(".mark-read");
  (next ?? $("read-all")).focus();
}

async function archive(id, archived) {
  if (!page.inboxClient) return; // not signed in yet
  const item = page.inbox.get(id);
  const next = $("inbox").querySelector(`li[data-id="${CSS.escape(id)}"]`)?.nextElementSibling;
  try {
    await (archived ? page.inboxClient.archive(id) : page.inboxClient.unarchive(id));
  } catch (err) {
    return failed(archived ? "archive" : "unarchive", err);
  }
  // Archived implies read (the notifier's rule); the item leaves this view.
  if (item) Object.assign(item, archived ? { archived, read: true, seen: true } : { archived });
  showClientCounts();
  renderInbox();
  const focusable = next?.dataset.id && $("inbox").querySelector(`li[data-id="${CSS.escape(next.dataset.id)}"] button`);
  (focusable ?? document.querySelector('#inbox-views button[aria-pressed="true"]')).focus();
}

async function markAllRead() {
  if (!page.inboxClient) return; // not signed in yet
  try {
    await page.inboxClient.readAll();
  } catch (err) {
    return failed("mark all read", err);
  }
  for (const item of page.inbox.values()) Object.assign(item, { read: true, seen: true });
  showClientCounts();
  renderInbox();
}

async function archiveAll() {
  if (!page.inboxClient) return; // not signed in yet
  try {
    await page.inboxClient.archiveAll();
  } catch (err) {
    return failed("archive all", err);
  }
  for (const item of page.inbox.values()) Object.assign(item, { archived: true, read: true, seen: true });
  showClientCounts();
  renderInbox();
}

function showView(archived) {
  if (page.archivedView === archived) return;
  page.archivedView = archived;
  page.cursor = null;
  page.inbox = new Map();
  renderInbox();
  refreshInbox();
}

// Live, from the SDK following the user channel: a new item (its counts follow as "counts").
function onNotification(item) {
  const isNew = !page.inbox.has(item.id);
  page.inbox = new Map([[item.id, item], ...[...page.inbox].filter(([id]) => id !== item.id)]);
  renderInbox();
  if (isNew) toast(item);
}

function onCounts(counts) {
  // Counts changed (a new item, or marks elsewhere: another tab or device): what is zero is
  // zero here too.
  setCounts(counts);
  if (page.unread === 0 || page.unseen === 0) {
    for (const item of page.inbox.values()) {
      if (page.unread === 0) item.read = true;
      item.seen = true;
    }
    renderInbox();
  }
}

function toast(item) {
  const region = $("toasts");
  const title = item.title ?? humanize(item.type ?? "notification");
  let timer = null;
  const node = el(
    "div",
    { class: "toast", "data-priority": item.priority ?? "normal", "data-id": item.id },
    el("div", { class: "toast-body" }, el("strong", { text: title }), item.body ? el("p", { text: item.body }) : null),
  );
  const dismiss = () => {
    clearTimeout(timer);
    node.remove();
  };
  node.append(el("button", { type: "button", class: "toast-close", "aria-label": `Dismiss “${title}”`, text: "×", onclick: dismiss }));
  node.addEventListener("keydown", (event) => event.key === "Escape" && dismiss());
  // Stays while hovered or focused, so it can be read and acted on.
  const arm = () => (timer = setTimeout(dismiss, TOAST_MS));
  node.addEventListener("mouseenter", () => clearTimeout(timer));
  node.addEventListener("focusin", () => clearTimeout(timer));
  node.addEventListener("mouseleave", arm);
  region.append(node);
  while (region.children.length > 4) region.firstElementChild.remove();
  arm();
}

// -- preferences -------------------------------------------------------------------------

function timeZones() {
  const zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  return [...new Set(["UTC", ...zones])];
}

function fillTimeZones(selected) {
  const zones = timeZones();
  if (selected && !zones.includes(selected)) zones.push(selected);
  $("timezone").replaceChildren(...zones.map((zone) => el("option", { value: zone, text: zone.replace(/_/g, " ") })));
  $("timezone").value = selected || "UTC";
}

function switchesFor(prefs, type) {
  const defaults = { ...DEFAULT_SWITCHES, ...(prefs.channels?.default ?? {}) };
  return type === "default" ? defaults : { ...defaults, ...(prefs.channels?.[type] ?? {}) };
}

function channelRow(type, switches) {
  return el(
    "tr",
    { "data-type": type },
    el("th", { scope: "row", text: type === "default" ? "default" : type }),
    ...CHANNELS.map((channel) =>
      el(
        "td",
        {},
        el("input", {
          type: "checkbox",
          "data-channel": channel,
          checked: switches[channel] === true,
          "aria-label": `${CHANNEL_LABELS[channel]} for ${type}`,
        }),
      ),
    ),
  );
}

function renderPrefs(prefs) {
  const types = ["default", ...new Set([...KNOWN_TYPES, ...Object.keys(prefs.channels ?? {})])].filter(
    (type, index, all) => all.indexOf(type) === index,
  );
  $("channel-rows").replaceChildren(...types.map((type) => channelRow(type, switchesFor(prefs, type))));
  const quiet = prefs.quiet_hours;
  $("quiet-enabled").checked = Boolean(quiet?.enabled);
  $("quiet-start").value = quiet?.start ?? "22:00";
  $("quiet-end").value = quiet?.end ?? "07:00";
  fillTimeZones(prefs.timezone);
  $("held").value = prefs.held ?? "hold";
  $("contact-email").value = prefs.contacts?.email ?? "";
  $("contact-phone").value = prefs.contacts?.phone ?? "";
}

function readPrefs() {
  const rows = [...$("channel-rows").querySelectorAll("tr")];
  const read = (row) =>
    Object.fromEntries([...row.querySelectorAll("input")].map((box) => [box.dataset.channel, box.checked]));
  const defaults = read(rows[0]);
  const channels = { default: defaults };
  for (const row of rows.slice(1)) {
    // Only what differs from default, so that a later change of default still applies.
    const differs = Object.entries(read(row)).filter(([channel, on]) => on !== defaults[channel]);
    if (differs.length) channels[row.dataset.type] = Object.fromEntries(differs);
  }
  return {
    timezone: $("timezone").value,
    quiet_hours: { enabled: $("quiet-enabled").checked, start: $("quiet-start").value, end: $("quiet-end").value },
    held: $("held").value,
    channels,
    contacts: {
      email: $("contact-email").value.trim() || null,
      phone: $("contact-phone").value.trim() || null,
      push_subscriptions: page.prefs?.contacts?.push_subscriptions ?? [],
    },
  };
}

async function loadPrefs() {
  if (!page.user) return;
  const result = await api("GET", userPath("preferences")).catch(() => null);
  if (!result || notifierMissing(result)) return;
  if (!result.ok) {
    $("prefs-status").textContent = `Preferences unavailable: ${result.data?.error?.message ?? result.status}`;
    return;
  }
  page.prefs = result.data;
  renderPrefs(page.prefs);
}

async function savePrefs(event) {
  event.preventDefault();
  const status = $("prefs-status");
  for (const field of $("prefs-form").querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  const prefs = readPrefs();
  status.textContent = "Saving…";
  status.dataset.result = "";
  const result = await api("PUT", userPath("preferences"), prefs).catch((err) => ({
    ok: false,
    data: { error: { message: err.message } },
  }));
  if (!result.ok) {
    const error = result.data?.error ?? {};
    const fields = Array.isArray(error.fields) ? error.fields : [];
    markInvalid(fields);
    const details = fields.map((f) => `${(f.loc ?? []).join(".")}: ${f.msg}`).join("; ");
    status.textContent = `Not saved: ${details || error.message || `HTTP ${result.status}`}`;
    status.dataset.result = "error";
    return;
  }
  page.prefs = result.data ?? prefs;
  renderPrefs(page.prefs);
  status.textContent = `Saved at ${timeOf()}`;
  status.dataset.result = "saved";
}

const FIELD_INPUTS = { timezone: "timezone", quiet_hours: "quiet-start", email: "contact-email", phone: "contact-phone", held: "held" };

function markInvalid(fields) {
  for (const field of fields) {
    const [head, type, channel] = field.loc ?? [];
    if (head === "channels" && channel) {
      // A switch that may not be off (a critical type): mark that very checkbox.
      const row = $("channel-rows").querySelector(`tr[data-type="${CSS.escape(String(type))}"]`);
      row?.querySelector(`input[data-channel="${CSS.escape(String(channel))}"]`)?.setAttribute("aria-invalid", "true");
      continue;
    }
    const path = (field.loc ?? []).join(".");
    const key = Object.keys(FIELD_INPUTS).find((name) => path.includes(name));
    if (key) $(FIELD_INPUTS[key]).setAttribute("aria-invalid", "true");
  }
}

function addType() {
  const input = $("new-type");
  const type = input.value.trim();
  if (!TYPE.test(type) || $("channel-rows").querySelector(`tr[data-type="${CSS.escape(type)}"]`)) {
    input.setAttribute("aria-invalid", "true");
    return;
  }
  input.removeAttribute("aria-invalid");
  const defaults = readPrefs().channels.default;
  $("channel-rows").append(channelRow(type, defaults));
  input.value = "";
  $("channel-rows").lastElementChild.querySelector("input").focus();
}

// -- wiring ------------------------------------------------------------------------------

function onPublication({ channel, data }) {
  if (channel.startsWith("session:") && data.type === "workflow_update") {
    onWorkflowUpdate(channel.slice("session:".length), data);
  }
  // The user channel's notification and inbox events: the inbox client follows them.
}

async function start(user, tokenSource) {
  if (page.client) await page.client.close();
  if (page.inboxClient) await page.inboxClient.close().catch(() => {});
  page.inboxClient = null;
  page.user = user;
  page.tokenSource = tokenSource;
  page.inbox = new Map();
  page.cursor = null;
  page.before = new Map();
  page.recovery = null;
  setCounts({ unread: 0, unseen: 0 });
  renderInbox();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const client = new ArchMeshRealtime(url, { token: tokenSource, backoffBase: 500, backoffCap: 5000 });
  page.client = client;
  client.on("state", onState);
  client.on("publication", onPublication);
  client.on("subscribed", onSubscribed);
  client.on("recovery_failed", onRecoveryFailed);
  client.on("error", (err) => console.warn("realtime:", err.code, err.message));
  try {
    const info = await client.connect();
    page.user = info.user_id;
  } catch (err) {
    showConnection("closed", `Not connected: ${err.reason ?? err.message}`);
    return;
  }
  const inbox = new ArchMeshInbox({ user: page.user, token: tokenSource });
  page.inboxClient = inbox;
  inbox.follow(client);
  inbox.on("item", onNotification);
  inbox.on("counts", onCounts);
  inbox.on("seen", onSeen);
  inbox.on("error", (err) => console.warn("inbox:", err.code, err.message));
  $("user-label").textContent = `Signed in as ${page.user}`;
  await Promise.all([...page.sessions.keys()].map((id) => watchSession(id)));
  await Promise.all([refreshInbox(), loadPrefs()]);
}

function rememberDev() {
  if (!DEV) return;
  try {
    localStorage.setItem("archmesh.dev", JSON.stringify({ user: page.user, sessions: [...page.sessions.keys()], selected: page.selected }));
  } catch {
    // Storage may be disabled; the page works without it.
  }
}

function remembered() {
  try {
    return JSON.parse(localStorage.getItem("archmesh.dev") || "{}");
  } catch {
    return {};
  }
}

function bindControls() {
  $("session-select").addEventListener("change", (event) => {
    page.selected = event.target.value;
    rememberDev();
    renderWorkflow();
  });
  $("session-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("session-new");
    const id = input.value.trim();
    if (!ID.test(id)) {
      input.setAttribute("aria-invalid", "true");
      return;
    }
    input.removeAttribute("aria-invalid");
    input.value = "";
    openSession(id);
  });
  $("simulate").addEventListener("click", simulate);
  $("read-all").addEventListener("click", markAllRead);
  $("archive-all").addEventListener("click", archiveAll);
  $("more").addEventListener("click", loadMore);
  for (const tab of document.querySelectorAll("#inbox-views button")) {
    tab.addEventListener("click", () => showView(tab.dataset.view === "archived"));
  }
  $("prefs-form").addEventListener("submit", savePrefs);
  $("add-type").addEventListener("click", addType);
  $("new-type").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      addType();
    }
  });
}

function main() {
  bindControls();
  fillTimeZones("UTC");
  renderWorkflow();
  const params = fragmentParams();
  const wanted = params.get("session");
  if (DEV) {
    const saved = remembered();
    for (const id of saved.sessions ?? ["demo"]) if (ID.test(id)) sessionOf(id);
    if (wanted && ID.test(wanted)) sessionOf(wanted);
    if (!page.sessions.size) sessionOf("demo");
    page.selected = wanted && ID.test(wanted) ? wanted : saved.selected && page.sessions.has(saved.selected) ? saved.selected : [...page.sessions.keys()][0];
    const user = [params.get("user"), saved.user, "dev-user"].find((value) => value && ID.test(value));
    $("user-form").hidden = false;
    $("simulate").hidden = false;
    $("user-id").value = user;
    $("user-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const next = $("user-id").value.trim();
      if (!ID.test(next)) {
        $("user-id").setAttribute("aria-invalid", "true");
        return;
      }
      $("user-id").removeAttribute("aria-invalid");
      rememberDev();
      start(next, devTokenSource(next)).then(rememberDev);
    });
    renderSessionPicker();
    start(user, devTokenSource(user)).then(rememberDev);
    return;
  }
  const source = hostTokenSource(params.get("token"));
  $("user-label").hidden = false;
  if (!source) {
    $("no-token").hidden = false;
    showConnection("closed", "No token");
    return;
  }
  const claimed = params.get("token") ? claimsOf(params.get("token")).sessions : null;
  for (const id of [...(Array.isArray(claimed) ? claimed : []), wanted]) if (id && ID.test(id)) sessionOf(id);
  page.selected = wanted && ID.test(wanted) ? wanted : [...page.sessions.keys()][0] ?? null;
  renderSessionPicker();
  start(null, source);
}

main();
