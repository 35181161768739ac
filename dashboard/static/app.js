// The llmling dashboard page: plain DOM, no framework, no build step. Every text is set with textContent.
"use strict";

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const SVG_NS = "http://www.w3.org/2000/svg";
const FEED_SHOWN = 500;
const state = { agents: [], feed: [], selectedTrace: null, kinds: new Set(), lastSeq: 0 };

// The token came in the URL once; the server set it as a cookie. Drop it from the address bar and history.
if (location.search.includes("token=")) history.replaceState(null, "", location.pathname);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF },
  };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

const fmt = {
  num: (v) => (v === null || v === undefined ? "–" : String(v)),
  secs: (v) => (v === null || v === undefined ? "–" : v < 1 ? `${(v * 1000).toFixed(0)} ms` : `${v.toFixed(2)} s`),
  cost: (v) => (v === null || v === undefined ? "–" : `$${Number(v).toFixed(4)}`),
  pair: (a, b) => `${fmt.num(a)} / ${fmt.num(b)}`,
  time: (ts) => new Date(ts * 1000).toLocaleTimeString(),
  ago: (ts) => (ts ? `${Math.max(0, Math.round(Date.now() / 1000 - ts))} s ago` : "–"),
};

function throttle(fn, ms) {
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

function fillSelect(select, names, keep) {
  const current = select.value;
  const first = keep ? [select.options[0]] : [];
  select.replaceChildren(...first, ...names.map((n) => el("option", { value: n }, n)));
  select.value = names.includes(current) || (keep && current === "") ? current : select.options[0]?.value ?? "";
}

// -- agents -------------------------------------------------------------------------------------------------
async function loadOverview() {
  try {
    const data = await api("/api/overview");
    document.getElementById("system-name").textContent = data.system.name || "…";
    document.getElementById("connection").className = `dot ${data.system.connected ? "on" : "off"}`;
    state.agents = data.agents;
    renderAgents();
  } catch (error) {
    document.getElementById("connection").className = "dot off";
  }
}

// The pid, or, when the status lists an agent's processes (replicas, remote hosts), each with its host.
function pidCell(agent) {
  if (!Array.isArray(agent.processes)) return el("td", {}, fmt.num(agent.pid));
  return el("td", { class: "processes" }, ...agent.processes.map((p) =>
    el("div", { class: `process state-${p.state}`, "data-host": p.host ?? "", "data-pid": p.pid ?? "" },
      `${p.host ?? "?"}:${fmt.num(p.pid)} ${p.state ?? ""}`)));
}

function renderAgents() {
  const rows = state.agents.map((a) => el("tr", { "data-agent": a.name },
    el("td", { class: "name" }, a.name),
    el("td", { class: `state-${a.state}`, title: a.error || "" }, a.state),
    pidCell(a), el("td", {}, fmt.num(a.restarts)),
    el("td", {}, fmt.pair(a.queued, a.max_queue)), el("td", {}, fmt.pair(a.running, a.concurrency)),
    el("td", {}, fmt.num(a.runs)), el("td", {}, fmt.num(a.failed)), el("td", {}, fmt.num(a.tokens)),
    el("td", {}, fmt.cost(a.cost)), el("td", {}, fmt.secs(a.p50)), el("td", {}, fmt.secs(a.p95)),
    el("td", {}, fmt.ago(a.last_seen))));
  document.querySelector("#agents tbody").replaceChildren(...rows);
  const names = state.agents.map((a) => a.name);
  fillSelect(document.getElementById("send-agent"), names, false);
  fillSelect(document.getElementById("feed-agent"), names, true);
  fillSelect(document.getElementById("history-agent"), names, true);
}

document.getElementById("send-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = document.getElementById("send-result");
  const prompt = document.getElementById("send-prompt");
  out.textContent = "sending…";
  try {
    const reply = await api("/api/send", { agent: document.getElementById("send-agent").value, prompt: prompt.value });
    out.textContent = `${reply.agent}: ${reply.content}`;
    state.selectedTrace = reply.trace_id;
    prompt.value = "";
    await loadTraces();
  } catch (error) {
    out.textContent = `error: ${error.message}`;
  }
});

// -- traces -------------------------------------------------------------------------------------------------
async function loadTraces() {
  const data = await api("/api/traces").catch(() => ({ traces: [] }));
  const items = data.traces.map((t) => el("li", {
    class: `${t.id === state.selectedTrace ? "selected" : ""} ${t.failed ? "failed" : ""}`,
    "data-trace": t.id, onclick: () => { state.selectedTrace = t.id; loadTraces(); },
  }, `${fmt.time(t.started_at)} ${t.root || "?"} · ${t.runs} run${t.runs === 1 ? "" : "s"}`,
    t.failed ? ` · ${t.failed} failed` : "", el("br"), el("span", { class: "muted" }, t.prompt)));
  document.getElementById("traces").replaceChildren(...items);
  if (state.selectedTrace) await loadTrace(state.selectedTrace);
}

async function loadTrace(traceId) {
  const view = document.getElementById("trace-view");
  try {
    view.replaceChildren(drawTree(await api(`/api/traces/${encodeURIComponent(traceId)}`)));
  } catch (error) {
    view.replaceChildren(el("p", { class: "muted" }, error.message));
  }
}

// A run per row, children under their parent (depth → x): the message tree of one trace.
function drawTree(trace) {
  const W = 230, H = 62, DX = 250, DY = 74;
  const byId = new Map(trace.nodes.map((n) => [n.id, n]));
  const children = new Map();
  const roots = [];
  for (const node of trace.nodes) {
    if (node.parent_id && byId.has(node.parent_id)) {
      if (!children.has(node.parent_id)) children.set(node.parent_id, []);
      children.get(node.parent_id).push(node);
    } else roots.push(node);
  }
  const placed = [];
  const walk = (node, depth) => {
    placed.push({ node, depth, row: placed.length });
    for (const child of children.get(node.id) || []) walk(child, depth + 1);
  };
  roots.forEach((root) => walk(root, 0));
  const where = new Map(placed.map((p) => [p.node.id, p]));
  const width = (Math.max(0, ...placed.map((p) => p.depth)) + 1) * DX + 20;
  const root = svg("svg", { id: "trace-tree", width, height: placed.length * DY + 20, "data-trace": trace.id });
  for (const p of placed) {
    const parent = where.get(p.node.parent_id);
    if (!parent) continue;
    const x1 = 10 + parent.depth * DX + 16, y1 = 10 + parent.row * DY + H;
    const x2 = 10 + p.depth * DX, y2 = 10 + p.row * DY + H / 2;
    root.append(svg("path", { class: "edge", d: `M${x1},${y1} V${y2} H${x2}` }));
  }
  for (const p of placed) {
    const n = p.node;
    const g = svg("g", {
      class: `node ${n.status}`, transform: `translate(${10 + p.depth * DX},${10 + p.row * DY})`,
      "data-run": n.id, "data-agent": n.agent, "data-parent": n.parent_id || "", "data-status": n.status,
    });
    const mark = { failed: " ✗ failed", dead: " ☠ dead letter", running: " …", retrying: " ↻ retrying" }[n.status] || "";
    g.append(svg("title", {}, `${n.agent} ${n.id}\n${n.prompt}\n→ ${n.content || n.error || ""}`));
    g.append(svg("rect", { width: W, height: H }));
    g.append(svg("text", { x: 8, y: 16, class: "title" }, `${n.agent}${mark}`));
    g.append(svg("text", { x: 8, y: 32 }, `attempt ${n.attempt} · ${fmt.secs(n.seconds)} · ${fmt.cost(n.cost)}`));
    const text = n.content || n.error || n.prompt || "";
    g.append(svg("text", { x: 8, y: 48, class: "preview" }, text.length > 36 ? `${text.slice(0, 35)}…` : text));
    root.append(g);
  }
  return root;
}

// -- live feed ----------------------------------------------------------------------------------------------
function feedLine(e) {
  const what = [e.event, e.state, e.trigger, e.kind && e.kind !== e.event ? e.kind : null, e.code]
    .filter((x) => x !== undefined && x !== null).join(" ");
  return el("li", { "data-event": e.event, "data-agent": e.agent || "", "data-run": e.id || "" },
    `${fmt.time(e.ts)}  ${(e.agent || "system").padEnd(14)} ${what}${e.text ? ": " + e.text : ""}`);
}

function renderFeed() {
  const agent = document.getElementById("feed-agent").value;
  const kind = document.getElementById("feed-kind").value;
  const shown = state.feed.filter((e) => (!agent || e.agent === agent) && (!kind || e.event === kind));
  document.getElementById("feed").replaceChildren(...shown.slice(-FEED_SHOWN).reverse().map(feedLine));
  fillSelect(document.getElementById("feed-kind"), [...state.kinds].sort(), true);
}
const renderFeedSoon = throttle(renderFeed, 200);
document.getElementById("feed-agent").addEventListener("change", renderFeed);
document.getElementById("feed-kind").addEventListener("change", renderFeed);

function addEvent(entry) {
  if (entry.seq <= state.lastSeq) return;
  state.lastSeq = entry.seq;
  state.feed.push(entry);
  state.kinds.add(entry.event);
  if (state.feed.length > 2 * FEED_SHOWN) state.feed.splice(0, state.feed.length - FEED_SHOWN);
  renderFeedSoon();
  if (entry.event.startsWith("run_") || entry.event === "dead_letter") { tracesSoon(); overviewSoon(); }
  if (entry.event === "dead_letter") deadSoon();
  if (entry.event.startsWith("trigger")) triggersSoon();
  if (entry.event === "agent_state") overviewSoon();
}
const tracesSoon = throttle(() => loadTraces(), 300);
const overviewSoon = throttle(loadOverview, 300);

async function startFeed() {
  const data = await api("/api/feed").catch(() => ({ events: [] }));
  data.events.forEach(addEvent);
  // Each message is a list of feed entries (the newest of a quarter second); a reconnect goes on after the last.
  const source = new EventSource(`/api/stream?after=${state.lastSeq}`);
  source.onmessage = (message) => JSON.parse(message.data).forEach(addEvent);
  source.onerror = () => { document.getElementById("connection").className = "dot off"; };
}

// -- triggers, dead letters, history ------------------------------------------------------------------------
async function loadTriggers() {
  const body = document.querySelector("#triggers tbody");
  try {
    const data = await api("/api/triggers");
    body.replaceChildren(...data.triggers.map((t) => el("tr", { "data-trigger": `${t.agent}/${t.name}` },
      el("td", {}, t.agent), el("td", {}, t.name), el("td", {}, t.type), el("td", {}, fmt.num(t.fired)),
      el("td", {}, fmt.num(t.failed)), el("td", { class: "trigger-state" }, t.enabled ? "enabled" : "disabled"),
      el("td", {}, el("button", {
        class: "toggle", onclick: async () => {
          await api("/api/triggers", { agent: t.agent, name: t.name, enabled: !t.enabled }).catch(alertError);
          loadTriggers();
        },
      }, t.enabled ? "disable" : "enable")))));
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" }, error.message)));
  }
}
const triggersSoon = throttle(loadTriggers, 300);

async function loadDeadLetters() {
  const box = document.getElementById("dead-letters");
  const data = await api("/api/dead_letters").catch((e) => ({ available: false, reason: e.message }));
  if (!data.available) {
    box.replaceChildren(el("p", { class: "muted" }, `not available: ${data.reason || ""}`));
    return;
  }
  if (!data.dead_letters.length) {
    box.replaceChildren(el("p", { class: "muted" }, "none"));
    return;
  }
  box.replaceChildren(el("table", { id: "dead-table" }, ...data.dead_letters.map((d) => el("tr", { "data-run": d.id },
    el("td", {}, d.agent), el("td", {}, `${d.attempts} attempts`), el("td", { title: d.prompt }, d.reason || ""),
    el("td", {}, el("button", {
      class: "retry", onclick: async () => {
        await api("/api/dead_letters/retry", { id: d.id }).catch(alertError);
        loadDeadLetters();
      },
    }, "retry"))))));
}
const deadSoon = throttle(loadDeadLetters, 300);

document.getElementById("history-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const agent = document.getElementById("history-agent").value;
  const q = document.getElementById("history-q").value;
  const list = document.getElementById("history");
  try {
    const data = await api(`/api/history?agent=${encodeURIComponent(agent)}&q=${encodeURIComponent(q)}`);
    list.replaceChildren(...data.runs.map((r) => el("li", { "data-run": r.id },
      `${fmt.time(r.finished_at)} ${r.agent}: ${r.prompt} → ${r.content}`)));
    if (!data.runs.length) list.replaceChildren(el("li", { class: "muted" }, "no run found"));
  } catch (error) {
    list.replaceChildren(el("li", { class: "muted" }, error.message));
  }
});

function alertError(error) { document.getElementById("send-result").textContent = `error: ${error.message}`; }

loadOverview().then(() => { loadTraces(); loadTriggers(); loadDeadLetters(); startFeed(); });
setInterval(loadOverview, 2000);
