// The operations console (docs/PROTOCOL.md, "Operations console"). It holds no key: the
// session cookie (HttpOnly) rides along with every call, and the X-Ticketgate-Console header
// proves the call comes from this page.

const $ = (id) => document.getElementById(id);
const views = ["overview", "channels", "users"];
let refresh = null;
let openChannel = null;
let tail = null; // the EventSource of the open channel's live publications
let stepSecs = 5;

async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "x-ticketgate-console": "1", ...(body ? { "content-type": "application/json" } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    showSignIn();
    throw new Error("signed out");
  }
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Error(json?.message ?? `${response.status}`);
  return json;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
  return td;
}

function ago(rfc3339) {
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(rfc3339)) / 1000));
  return seconds < 90 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

async function showOverview() {
  const { nodes, bus } = await api("/api/nodes");
  const body = $("nodes").querySelector("tbody");
  body.replaceChildren();
  let total = 0, authenticated = 0, waiting = 0;
  for (const node of nodes) {
    const row = document.createElement("tr");
    // Nodes sweep a node after two missed heartbeats; the listing drops it after three.
    const late = Date.now() - Date.parse(node.heartbeat_at) > 2 * stepSecs * 1000 + 1000;
    if (late) row.className = "stale";
    cell(row, node.id + (late ? " (no heartbeat)" : ""));
    cell(row, node.address);
    // A rolling deploy's mixed versions show here.
    cell(row, `${node.version} (${node.commit})`);
    cell(row, new Date(node.started_at).toLocaleString());
    cell(row, ago(node.heartbeat_at));
    cell(row, node.connections.total);
    cell(row, node.connections.authenticated);
    body.append(row);
    total += node.connections.total;
    authenticated += node.connections.authenticated;
    waiting += node.connections.unauthenticated;
  }
  $("total-connections").textContent = total;
  $("total-authenticated").textContent = authenticated;
  $("total-waiting").textContent = waiting;
  $("total-nodes").textContent = nodes.length;
  $("bus-mode").textContent = bus;
  const series = await api("/api/series");
  stepSecs = series.step_secs;
  drawCharts(series);
}

// The charts of the overview: every node's samples (GET /api/series) merged by time.
const CHARTS = [
  { title: "Connections", unit: "", series: { connections: (s) => s.connections, authenticated: (s) => s.authenticated } },
  { title: "Messages per second", unit: "/s", series: { in: (s) => s.messages_in_per_sec, out: (s) => s.messages_out_per_sec } },
  { title: "Authentications per second", unit: "/s", series: { authenticated: (s) => s.authentications_per_sec }, keyed: "auth_failures_per_sec", prefix: "failed " },
  { title: "Ticket rejections per second", unit: "/s", series: {}, keyed: "ticket_rejections_per_sec", prefix: "" },
  { title: "Fan-out latency (ms)", unit: " ms", series: { p50: (s) => s.fanout_p50_ms, p99: (s) => s.fanout_p99_ms }, worst: true },
  { title: "Cluster event lag (ms)", unit: " ms", series: { p50: (s) => s.event_lag_p50_ms, p99: (s) => s.event_lag_p99_ms }, worst: true },
  { title: "Outbox lag (ms)", unit: " ms", series: { "oldest unpublished": (s) => s.outbox_lag_ms }, worst: true },
];
const COLORS = ["#3b5bdb", "#2b8a3e", "#c92a2a", "#e67700", "#862e9c", "#0b7285"];
const plots = new Map();

// One row per time step: sums over the nodes (for latencies, the worst node).
function merge(series, chart) {
  const step = series.step_secs;
  const rows = new Map();
  const names = new Set(Object.keys(chart.series));
  for (const node of series.nodes) {
    for (const sample of node.samples) {
      const t = Math.round(sample.t / step) * step;
      const row = rows.get(t) ?? {};
      const values = Object.fromEntries(Object.entries(chart.series).map(([name, f]) => [name, f(sample)]));
      for (const [label, value] of Object.entries(chart.keyed ? sample[chart.keyed] : {})) {
        values[chart.prefix + label] = value;
        names.add(chart.prefix + label);
      }
      for (const [name, value] of Object.entries(values)) {
        if (value === null || value === undefined) continue;
        row[name] = chart.worst ? Math.max(row[name] ?? 0, value) : (row[name] ?? 0) + value;
      }
      rows.set(t, row);
    }
  }
  const times = [...rows.keys()].sort((a, b) => a - b);
  const columns = [...names];
  return { columns, data: [times, ...columns.map((name) => times.map((t) => rows.get(t)[name] ?? null))] };
}

function drawCharts(series) {
  const holder = $("charts");
  for (const chart of CHARTS) {
    const { columns, data } = merge(series, chart);
    const key = chart.title + "|" + columns.join(",");
    let entry = plots.get(chart.title);
    if (entry && entry.key !== key) {
      entry.plot.destroy();
      entry.box.remove();
      entry = null;
    }
    if (!entry) {
      const box = document.createElement("div");
      box.className = "chart";
      box.append(Object.assign(document.createElement("h3"), { textContent: chart.title }));
      holder.append(box);
      const options = {
        width: Math.max(280, holder.clientWidth / 2 - 40),
        height: 160,
        legend: { live: false },
        series: [{}, ...columns.map((name, i) => ({
          label: name, stroke: COLORS[i % COLORS.length], width: 1.5,
          value: (_, v) => (v === null ? "–" : `${+v.toFixed(2)}${chart.unit}`),
        }))],
        axes: [{}, { size: 50 }],
      };
      entry = { key, box, plot: new uPlot(options, data, box) };
      plots.set(chart.title, entry);
    } else {
      entry.plot.setData(data);
    }
  }
}

async function showChannels() {
  const prefix = $("channel-prefix").value.trim();
  const { channels } = await api(`/api/channels?prefix=${encodeURIComponent(prefix)}`);
  const body = $("channel-list").querySelector("tbody");
  body.replaceChildren();
  for (const channel of channels) {
    const row = document.createElement("tr");
    row.className = "clickable";
    cell(row, channel.channel);
    cell(row, channel.subscribers);
    row.addEventListener("click", () => { openChannel = channel.channel; showChannel(); });
    body.append(row);
  }
  if (openChannel) await showChannel();
}

// The channel's publications from now on, through the console's own subscription.
function follow(channel) {
  if (tail?.channel === channel) return;
  stopFollowing();
  $("channel-tail").replaceChildren();
  const source = new EventSource(`/console/channels/${encodeURIComponent(channel)}/tail`);
  source.addEventListener("message", (event) => {
    const publication = JSON.parse(event.data);
    const item = document.createElement("li");
    item.textContent = `${new Date().toLocaleTimeString()}  ${JSON.stringify(publication.data)}`;
    $("channel-tail").prepend(item);
    while ($("channel-tail").children.length > 50) $("channel-tail").lastChild.remove();
  });
  tail = { channel, source };
}

function stopFollowing() {
  tail?.source.close();
  tail = null;
}

async function showChannel() {
  const channel = openChannel;
  const path = `/api/channels/${encodeURIComponent(channel)}`;
  $("channel-detail").hidden = false;
  $("channel-name").textContent = channel;
  follow(channel);
  const presence = $("channel-presence");
  const history = $("channel-history");
  try {
    const { clients } = await api(`${path}/presence`);
    presence.replaceChildren(...clients.map((client) => {
      const item = document.createElement("li");
      item.textContent = `${client.user_id} (${client.connection_id})`;
      return item;
    }));
  } catch (e) {
    presence.replaceChildren(Object.assign(document.createElement("li"), { textContent: e.message }));
  }
  try {
    const { publications } = await api(`${path}/history?limit=20`);
    history.replaceChildren(...publications.map((publication) => {
      const item = document.createElement("li");
      item.value = publication.offset;
      item.textContent = JSON.stringify(publication.data);
      return item;
    }));
  } catch (e) {
    history.replaceChildren(Object.assign(document.createElement("li"), { textContent: e.message }));
  }
}

async function show(view) {
  clearInterval(refresh);
  if (view !== "channels") stopFollowing();
  for (const name of views) $(name).hidden = name !== view;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.view === view);
  }
  const load = { overview: showOverview, channels: showChannels, users: async () => {} }[view];
  const tick = () => load().catch((e) => console.warn(e.message));
  await tick();
  if (view !== "users") refresh = setInterval(tick, 2000);
}

function showSignIn() {
  clearInterval(refresh);
  stopFollowing();
  $("nav").hidden = true;
  for (const name of views) $(name).hidden = true;
  $("sign-in").hidden = false;
  $("password").focus();
}

function showConsole() {
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  const view = location.hash.slice(1);
  show(views.includes(view) ? view : "overview");
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const response = await fetch("/console/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ password: $("password").value }),
  });
  $("password").value = "";
  if (response.ok) {
    $("sign-in-error").textContent = "";
    showConsole();
  } else {
    const error = await response.json().catch(() => ({}));
    $("sign-in-error").textContent = error.message ?? `sign-in failed (${response.status})`;
  }
});

$("sign-out").addEventListener("click", async () => {
  await fetch("/console/session", { method: "DELETE", credentials: "same-origin" });
  showSignIn();
});

window.addEventListener("hashchange", () => {
  const view = location.hash.slice(1);
  if (views.includes(view) && !$("nav").hidden) show(view);
});

$("channel-filter").addEventListener("submit", (event) => { event.preventDefault(); showChannels(); });

$("publish-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const data = JSON.parse($("publish-data").value);
    if (!confirm(`Publish ${JSON.stringify(data)} to ${openChannel}, for every subscriber?`)) return;
    await api(`/api/channels/${encodeURIComponent(openChannel)}/publish`, { method: "POST", body: { data } });
    $("publish-error").textContent = "";
    await showChannel();
  } catch (e) {
    $("publish-error").textContent = e.message;
  }
});

async function lookUp(user) {
  const { connections } = await api(`/api/users/${encodeURIComponent(user)}/connections`);
  const body = $("user-connections").querySelector("tbody");
  body.replaceChildren(...connections.map((connection) => {
    const row = document.createElement("tr");
    cell(row, connection.connection_id);
    cell(row, connection.node);
    cell(row, connection.transport === "sse" ? "SSE" : "WebSocket");
    cell(row, new Date(connection.connected_at).toLocaleString());
    cell(row, connection.client_ip ?? "–");
    cell(row, connection.subscriptions.join(", ") || "–");
    return row;
  }));
  $("user-connections").hidden = false;
  $("user-result").textContent = `${user}: ${connections.length} open connection${connections.length === 1 ? "" : "s"}`;
}

$("user-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await lookUp($("user-id").value.trim());
  } catch (e) {
    $("user-result").textContent = e.message;
  }
});

$("disconnect-user").addEventListener("click", async () => {
  const user = $("user-id").value.trim();
  if (!user) return;
  if (!confirm(`Disconnect every connection of ${user}, on every node, and delete their unused tickets?`)) return;
  try {
    const result = await api(`/api/users/${encodeURIComponent(user)}/disconnect`, { method: "POST" });
    $("user-result").textContent = `${user}: disconnected (${result.tickets_deleted} unused tickets deleted)`;
  } catch (e) {
    $("user-result").textContent = e.message;
  }
});

$("revoke-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const jti = $("revoke-jti").value.trim();
  const expires_at = Number($("revoke-until").value);
  if (!confirm(`Revoke the JWT ${jti} until ${new Date(expires_at * 1000).toLocaleString()}?`)) return;
  try {
    await api("/api/revocations", { method: "POST", body: { jti, expires_at } });
    $("user-result").textContent = `${jti}: revoked`;
  } catch (e) {
    $("user-result").textContent = e.message;
  }
});

fetch("/console/session", { credentials: "same-origin" })
  .then((response) => (response.ok ? showConsole() : showSignIn()))
  .catch(showSignIn);
