// ArchMesh operator console: plain ES module, no framework, no build step, no CDN.
// Every read and action goes through the documented HTTP APIs of this origin with the
// operator's credential (the API key or an admin token), kept in sessionStorage only.

const STORE = "archmesh-admin-credential";
const POLL_MS = 2000;
const WINDOW = 150; // samples kept per chart: five minutes at one poll every two seconds

const $ = (selector) => document.querySelector(selector);
let credential = sessionStorage.getItem(STORE);
let pollTimer = null;
const samples = []; // ring buffer of {at, deliveries, connections, publications, throughput, lag}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${credential}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const error = (json && json.error) || {};
    throw new ApiError(response.status, error.code || "http_error", error.message || text);
  }
  return json;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function show(message, target) {
  $(target).textContent = message;
}

// -- sign in ------------------------------------------------------------------------------

async function signIn(given) {
  credential = given;
  try {
    const who = await api("GET", "/api/admin/whoami");
    sessionStorage.setItem(STORE, given);
    const kind = who.credential === "api_key" ? "API key" : "admin token";
    show(`Signed in with the ${kind} · answered by ${who.node}`, "#who");
    $("#sign-in").hidden = true;
    $("#console").hidden = false;
    $("#sign-out").hidden = false;
    start();
  } catch (error) {
    credential = null;
    sessionStorage.removeItem(STORE);
    $("#sign-in").hidden = false;
    $("#console").hidden = true;
    show(error.message, "#sign-in-error");
  }
}

function signOut() {
  sessionStorage.removeItem(STORE);
  credential = null;
  clearTimeout(pollTimer);
  location.reload();
}

// -- confirmation -------------------------------------------------------------------------

function confirmThen(text) {
  const dialog = $("#confirm");
  show(text, "#confirm-text");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// -- nodes and charts ---------------------------------------------------------------------

function uptime(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function cell(value, numeric = false) {
  return el("td", numeric ? { className: "num" } : {}, value === undefined ? "–" : String(value));
}

function badge(text, kind = "") {
  return el("span", { className: `badge ${kind}` }, text);
}

function renderNodes(nodes) {
  const body = $("#nodes tbody");
  body.replaceChildren(
    ...nodes.map((n) => {
      const gateway = n.role === "gateway";
      const state = n.draining ? badge("draining", "warn") : badge("serving");
      const link = gateway ? n.broker : n.redis;
      return el(
        "tr",
        { dataset: { node: n.node, role: n.role, draining: String(Boolean(n.draining)) } },
        cell(n.node),
        cell(n.role),
        cell(n.version),
        cell(uptime(n.uptime)),
        cell(gateway ? n.connections : undefined, true),
        cell(gateway ? n.subscriptions : undefined, true),
        cell(gateway ? n.rates.deliveries : undefined, true),
        cell(gateway ? n.rates.publications : undefined, true),
        cell(gateway ? undefined : n.rates.throughput, true),
        cell(gateway ? undefined : n.queue_lag, true),
        cell(gateway ? undefined : n.pending, true),
        cell(gateway ? undefined : n.dead_letters, true),
        el("td", {}, badge(link || "–", link === "connected" ? "" : "bad")),
        el("td", {}, state),
      );
    }),
  );
  const gateways = nodes.filter((n) => n.role === "gateway").length;
  show(`${gateways} gateway(s), ${nodes.length - gateways} notifier(s)`, "#nodes-count");
}

function sample(nodes) {
  const sum = (role, pick) =>
    nodes.filter((n) => n.role === role).reduce((total, n) => total + (pick(n) || 0), 0);
  samples.push({
    at: Date.now(),
    deliveries: sum("gateway", (n) => n.rates.deliveries),
    connections: sum("gateway", (n) => n.connections),
    publications: sum("gateway", (n) => n.rates.publications),
    throughput: sum("notifier", (n) => n.rates.throughput),
    lag: sum("notifier", (n) => n.queue_lag),
  });
  if (samples.length > WINDOW) samples.shift();
}

function drawLine(canvas, values, color) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const top = Math.max(1, ...values);
  const pad = 16;
  ctx.strokeStyle = "#dfe4ee";
  ctx.beginPath();
  ctx.moveTo(0, height - pad + 0.5);
  ctx.lineTo(width, height - pad + 0.5);
  ctx.stroke();
  ctx.fillStyle = "#5b6477";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(`max ${Math.round(top * 100) / 100}`, 4, 11);
  const last = values.length ? values[values.length - 1] : 0;
  ctx.fillText(`now ${Math.round(last * 100) / 100}`, width - 70, 11);
  if (values.length < 2) return;
  const step = width / (WINDOW - 1);
  const x0 = width - step * (values.length - 1);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = x0 + i * step;
    const y = height - pad - (v / top) * (height - pad - 16);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
  canvas.dataset.points = String(values.length);
  canvas.dataset.last = String(last);
  canvas.dataset.max = String(Math.max(0, ...values));
}

function drawCharts() {
  const series = [
    ["#chart-deliveries", "deliveries", "#3257d6"],
    ["#chart-connections", "connections", "#1f8a4c"],
    ["#chart-publications", "publications", "#7a3fd1"],
    ["#chart-throughput", "throughput", "#b26a00"],
    ["#chart-lag", "lag", "#c0392b"],
  ];
  for (const [selector, key, color] of series) {
    drawLine($(selector), samples.map((s) => s[key]), color);
  }
}

function renderBusiest(channels) {
  $("#busiest").replaceChildren(
    ...channels.map((c) =>
      el(
        "li",
        { dataset: { channel: c.channel } },
        el("button", { type: "button", onclick: () => openChannel(c.channel) }, c.channel),
        ` ${c.subscribers} subscriber(s) on ${c.nodes.length} node(s)`,
      ),
    ),
  );
  if (!channels.length) $("#busiest").replaceChildren(el("li", {}, "no subscribed channels"));
}

async function poll() {
  try {
    const [{ nodes }, { channels }] = await Promise.all([
      api("GET", "/api/admin/nodes"),
      api("GET", "/api/admin/channels"),
    ]);
    renderNodes(nodes);
    sample(nodes);
    drawCharts();
    renderBusiest(channels);
    await refreshNotifier();
  } catch (error) {
    if (error.status === 401 || error.status === 403) return signOut();
    show(`Refresh failed: ${error.message}`, "#who");
  } finally {
    pollTimer = setTimeout(poll, POLL_MS);
  }
}

// -- channels -----------------------------------------------------------------------------

async function openChannel(channel) {
  $("#channel").value = channel;
  $("#publish-channel").value = channel;
  const name = encodeURIComponent(channel);
  const [presence, history] = await Promise.all([
    api("GET", `/api/admin/channels/${name}/presence`),
    api("GET", `/api/channels/${name}/history?limit=10&reverse=true`),
  ]);
  $("#channel-view").hidden = false;
  $("#channel-view").dataset.channel = channel;
  show(
    presence.tracked
      ? `${presence.stats.connections} connection(s), ${presence.stats.users} user(s) present`
      : "Presence is not tracked for this channel (ARCHMESH_PRESENCE_PREFIXES)",
    "#channel-stats",
  );
  $("#channel-presence").replaceChildren(
    ...presence.members.map((m) => el("li", {}, `${m.user_id} · ${m.client_id} on ${m.node}`)),
  );
  const pubs = history.publications || [];
  $("#channel-history").replaceChildren(
    ...pubs.map((p) => el("li", { dataset: { offset: p.offset } }, `#${p.offset} ${JSON.stringify(p.data)}`)),
  );
  if (!pubs.length) $("#channel-history").replaceChildren(el("li", {}, "no history"));
}

async function publish(event) {
  event.preventDefault();
  let data;
  try {
    data = JSON.parse($("#publish-data").value);
  } catch (error) {
    return show(`Not JSON: ${error.message}`, "#publish-result");
  }
  const channel = $("#publish-channel").value.trim();
  try {
    const reply = await api("POST", "/api/publish", { channel, data });
    show(`Published to ${reply.channel} at offset ${reply.offset}`, "#publish-result");
    if ($("#channel-view").dataset.channel === channel) await openChannel(channel);
  } catch (error) {
    show(`Refused: ${error.message}`, "#publish-result");
  }
}

// -- users --------------------------------------------------------------------------------

async function lookUpUser(event) {
  if (event) event.preventDefault();
  const user = $("#user").value.trim();
  try {
    const found = await api("GET", `/api/admin/users/${encodeURIComponent(user)}`);
    $("#user-view").hidden = false;
    $("#user-view").dataset.user = user;
    show(
      found.tracked
        ? `${found.members.length} connection(s) across the nodes`
        : "Connections are tracked with presence: add user: to ARCHMESH_PRESENCE_PREFIXES",
      "#user-summary",
    );
    $("#user-connections").replaceChildren(
      ...found.members.map((m) => el("li", { dataset: { node: m.node } }, `${m.client_id} on ${m.node}`)),
    );
  } catch (error) {
    show(error.message, "#user-result");
  }
}

async function control(action, body, question) {
  if (!(await confirmThen(question))) return show("Cancelled", "#user-result");
  try {
    const reply = await api("POST", `/api/control/${action}`, body);
    show(`${action}: sent on the control stream (offset ${reply.offset})`, "#user-result");
  } catch (error) {
    show(`${action} refused: ${error.message}`, "#user-result");
  }
}

// -- notifier -----------------------------------------------------------------------------

let notifierAvailable = true;

async function refreshNotifier() {
  if (!notifierAvailable) return;
  let queue;
  try {
    queue = await api("GET", "/api/ops/queue");
  } catch (error) {
    if (error.status === 404) {
      notifierAvailable = false;
      $("#notifier-missing").hidden = false;
      return;
    }
    throw error;
  }
  $("#queue tbody").replaceChildren(
    ...queue.partitions.map((p) =>
      el(
        "tr",
        {},
        cell(p.stream),
        cell(p.length, true),
        cell(p.lag, true),
        cell(p.pending, true),
        cell(p.consumers.map((c) => `${c.name} (${c.pending})`).join(", ") || "–"),
      ),
    ),
  );
  show(`${queue.scheduled} scheduled deliveries`, "#queue-extra");
  const dead = await api("GET", "/api/ops/dead-letters?count=20");
  show(`(${dead.total})`, "#dead-count");
  $("#dead-letters").replaceChildren(
    ...dead.items.map((d) =>
      el(
        "li",
        { dataset: { id: d.id } },
        el("strong", {}, `${d.id} · ${d.reason}`),
        el("pre", {}, JSON.stringify(d.request, null, 1)),
        el(
          "div",
          { className: "actions" },
          el("button", { type: "button", className: "requeue", onclick: () => deadLetter(d, "requeue") }, "Requeue…"),
          el("button", { type: "button", className: "discard", onclick: () => deadLetter(d, "discard") }, "Discard…"),
        ),
      ),
    ),
  );
}

async function deadLetter({ id, partition }, action) {
  if (!(await confirmThen(`${action} dead letter ${id}?`))) return;
  const where = `partition=${encodeURIComponent(partition ?? 0)}`;
  try {
    if (action === "requeue") await api("POST", `/api/ops/dead-letters/${id}/requeue?${where}`);
    else await api("DELETE", `/api/ops/dead-letters/${id}?${where}`);
  } catch (error) {
    show(error.message, "#dead-count");
  }
  await refreshNotifier();
}

async function deadLetters(action) {
  if (!(await confirmThen(`${action} every dead letter?`))) return;
  const reply = await api("POST", `/api/ops/dead-letters/${action}`);
  show(`(${action}: ${reply.requeued ?? reply.discarded})`, "#dead-count");
  await refreshNotifier();
}

async function timeline(event) {
  event.preventDefault();
  const id = $("#notification").value.trim();
  try {
    const found = await api("GET", `/api/ops/notifications/${encodeURIComponent(id)}/timeline`);
    $("#timeline").replaceChildren(
      ...found.events.map((e) =>
        el(
          "li",
          { dataset: { medium: e.medium, status: e.status } },
          `${e.at} ${e.medium} → ${e.status}` +
            (e.attempts ? ` (attempt ${e.attempts})` : "") +
            (e.reason ? ` · ${e.reason}` : ""),
        ),
      ),
    );
  } catch (error) {
    $("#timeline").replaceChildren(el("li", {}, error.message));
  }
}

const STATUS_COLORS = {
  sent: "#1f8a4c",
  held: "#7a3fd1",
  retrying: "#b26a00",
  failed: "#c0392b",
  suppressed: "#8a93a6",
  pending: "#3257d6",
};

async function analytics() {
  if (!notifierAvailable) return;
  let reply;
  try {
    reply = await api("GET", "/api/analytics");
  } catch {
    return;
  }
  const hours = new Map();
  for (const b of reply.buckets) {
    const counts = hours.get(b.hour) || {};
    counts[b.status] = (counts[b.status] || 0) + b.count;
    hours.set(b.hour, counts);
  }
  const canvas = $("#chart-analytics");
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  const end = new Date(reply.to);
  const slots = [];
  for (let i = 23; i >= 0; i--) {
    const h = new Date(end.getTime() - i * 3600e3);
    h.setUTCMinutes(0, 0, 0);
    slots.push(h.toISOString().slice(0, 13));
  }
  const totals = slots.map((slot) => {
    const key = [...hours.keys()].find((k) => k.slice(0, 13) === slot);
    return key ? hours.get(key) : {};
  });
  const top = Math.max(1, ...totals.map((c) => Object.values(c).reduce((a, b) => a + b, 0)));
  const bar = width / slots.length;
  totals.forEach((counts, i) => {
    let y = height - 14;
    for (const [status, color] of Object.entries(STATUS_COLORS)) {
      const h = ((counts[status] || 0) / top) * (height - 30);
      ctx.fillStyle = color;
      ctx.fillRect(i * bar + 2, y - h, bar - 4, h);
      y -= h;
    }
  });
  ctx.fillStyle = "#5b6477";
  ctx.font = "10px system-ui, sans-serif";
  ctx.fillText(`max ${top}/h`, 4, 11);
  ctx.fillText(`${slots[0].slice(11)}:00`, 2, height - 2);
  ctx.fillText("now", width - 22, height - 2);
  canvas.dataset.buckets = String(reply.buckets.length);
  $("#analytics-legend").replaceChildren(
    ...Object.entries(STATUS_COLORS).flatMap(([status, color]) => {
      const swatch = el("span");
      swatch.style.background = color;
      return [swatch, status];
    }),
  );
}

// -- start --------------------------------------------------------------------------------

function start() {
  poll();
  analytics();
  setInterval(analytics, 30000);
}

function wire() {
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#credential").value.trim());
  });
  $("#sign-out").addEventListener("click", signOut);
  $("#channel-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openChannel($("#channel").value.trim()).catch((error) => show(error.message, "#channel-stats"));
  });
  $("#publish-form").addEventListener("submit", publish);
  $("#user-form").addEventListener("submit", lookUpUser);
  const user = () => $("#user-view").dataset.user;
  $("#user-disconnect").addEventListener("click", () =>
    control("disconnect", { user: user(), reconnect: false }, `Disconnect every connection of ${user()}?`),
  );
  $("#user-revoke").addEventListener("click", () =>
    control("revoke", { user: user() }, `Revoke every token issued to ${user()} until now?`),
  );
  $("#unsubscribe-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const channel = $("#unsubscribe-channel").value.trim();
    control("unsubscribe", { user: user(), channel }, `Unsubscribe ${user()} from ${channel}?`);
  });
  $("#dead-requeue-all").addEventListener("click", () => deadLetters("requeue"));
  $("#dead-discard-all").addEventListener("click", () => deadLetters("discard"));
  $("#timeline-form").addEventListener("submit", timeline);
  if (credential) signIn(credential);
  else $("#sign-in").hidden = false;
}

wire();
