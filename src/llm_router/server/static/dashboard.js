// llm-runner-router dashboard. Vanilla JavaScript, no build step, no dependencies.
//
// Data flow: GET /models once, then GET /models/events (server-sent events, read with fetch()
// so the API key can be sent) drives every status change; each event also schedules one
// re-read of /models for the details it does not carry (memory, load time). One tab of the
// browser follows the stream for all (a lock) and passes the events on (a BroadcastChannel):
// a browser holds 6 connections to a host, and an endless stream per tab used them up. Occupancy
// (slots, queue, memory) and the charts come from /metrics every 2 s. Every call sends
// `Authorization: Bearer <key>` when a key is stored; a 401 asks for one, a 403 (the key lacks
// a scope) shows the server's reason where the action was: no call throws past its handler.
"use strict";

const KEY_STORE = "llm-router-key";
const CLIENT_ERRORS = new Set([
  "BadRequest", "ContextLengthExceeded", "ModelNotFound", "ModelNotLoaded",
  "AuthenticationFailed", "PermissionDenied", "RateLimited", "QuotaExceeded",
]);
const SAMPLE_MS = 2000;
const HISTORY = 150; // samples: 5 minutes

const state = {
  models: new Map(), // id -> entry of GET /models
  routes: [],
  budget: 0,
  used: 0,
  gauges: {}, // from /metrics: {slots_busy: {model: n}, ...}
  series: { rps: [], tps: [], ttft: [], err: [] },
  last: null, // the previous /metrics sample
  fallbacks: [], // [{time, route, target, error, count}]
  chat: [],
  abort: null,
};

// -- helpers ------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v); // CSSOM: allowed by the page's CSP
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function mib(bytes) {
  if (bytes === null || bytes === undefined) return "-";
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(0)} MiB`;
}

function ago(seconds) {
  if (!seconds) return "-";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

// -- API calls, with the key --------------------------------------------------------------

class AuthNeeded extends Error {} // 401: no key, or not one the server knows
class Forbidden extends AuthNeeded {} // 403: the key lacks the scope (the message says which)

function key() {
  return localStorage.getItem(KEY_STORE) || "";
}

// Throws AuthNeeded on a 401 (after asking for a key, unless `ask` is false) and Forbidden on a
// 403, with the server's message; other answers are returned as they are.
async function api(path, { json, ask = true, ...options } = {}) {
  const headers = { ...(options.headers || {}) };
  if (key()) headers.Authorization = `Bearer ${key()}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(json);
  }
  const res = await fetch(path, { ...options, headers });
  if (res.status === 401 || res.status === 403) {
    const body = await res.json().catch(() => ({}));
    const message = (body.error && body.error.message) || `${res.status} ${res.statusText}`;
    if (res.status === 403) throw new Forbidden(message);
    if (ask) askKey(message);
    throw new AuthNeeded(message);
  }
  return res;
}

async function errorText(res) {
  const body = await res.json().catch(() => null);
  return (body && body.error && body.error.message) || `${res.status} ${res.statusText}`;
}

function askKey(reason) {
  const dialog = $("key-dialog");
  $("key-reason").textContent = reason || "This server asks for a key.";
  $("key-input").value = key();
  if (!dialog.open) dialog.showModal();
}

function setupKey() {
  $("key-button").addEventListener("click", () => askKey("The key is kept in this browser only."));
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const action = ev.submitter ? ev.submitter.value : "save";
    const before = key();
    if (action === "save") localStorage.setItem(KEY_STORE, $("key-input").value.trim());
    if (action === "forget") localStorage.removeItem(KEY_STORE);
    $("key-dialog").close();
    if (key() !== before) forgetWhatWasRead();
    if (action !== "cancel") {
      restartEvents();
      wakeMetrics(); // a new key may read /metrics: ask at once, not after the back-off
    }
  });
}

// What the page read with the previous key is not shown under another one (or none): the
// next reads with the new key fill it again, if it may read it.
function forgetWhatWasRead() {
  Object.assign(state, {
    models: new Map(),
    routes: [],
    budget: 0,
    used: 0,
    gauges: {},
    series: { rps: [], tps: [], ttft: [], err: [] },
    last: null,
    fallbacks: [],
  });
  notice("", "action"); // a refusal of the old key's is not the new one's
  render();
  renderCharts();
}

// -- models: listing and events -------------------------------------------------------------

async function refreshModels() {
  const res = await api("/models");
  if (!res.ok) return notice(await errorText(res));
  const body = await res.json();
  state.models = new Map(body.data.map((m) => [m.id, m]));
  state.routes = body.routes || [];
  state.budget = body.memory_budget_bytes || 0;
  state.used = body.memory_used_bytes || 0;
  notice(body.memory_over_budget ? "Measured memory is over the budget: loads wait." : "");
  render();
}

const LISTING_EVERY_MS = 5000;
let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refreshModels().catch(() => {}), 200);
}

function onEvent(ev) {
  const entry = state.models.get(ev.model);
  const statuses = ["waiting", "loading", "loaded", "unloading", "unloaded", "error"];
  if (entry && statuses.includes(ev.event)) {
    entry.status = { value: ev.event };
    if (ev.error) entry.status.error = ev.error;
    render();
  }
  refreshSoon(); // added, removed, memory and load time: read the listing once
}

let eventsAbort = null;
let leading = false; // this tab follows the stream for the others
let liveNow = [false, undefined];
const channel = "BroadcastChannel" in window ? new BroadcastChannel("llm-router-events") : null;

function restartEvents() {
  if (eventsAbort) eventsAbort.abort();
  eventsAbort = new AbortController();
  const signal = eventsAbort.signal;
  refreshModels().catch(() => {}); // the listing, whether or not this tab follows the stream
  if (!channel || !navigator.locks) return followEvents(signal);
  // The tab holding the lock follows the stream until it closes or stops; another then does.
  navigator.locks
    .request("llm-router-events", { signal }, async () => {
      leading = true;
      try {
        await followEvents(signal);
      } finally {
        leading = false;
      }
    })
    .catch(() => {}); // aborted while waiting: a new key restarts it
  channel.postMessage({ hello: true }); // the tab that follows says how the stream is
}

if (channel) {
  channel.onmessage = (msg) => {
    const data = msg.data || {};
    if (data.ev && !leading) onEvent(data.ev);
    if (data.live && !leading) showLive(...data.live);
    if (data.hello && leading) channel.postMessage({ live: liveNow });
  };
}

// Another tab stored or forgot a key: the stream follows it.
window.addEventListener("storage", (ev) => {
  if (ev.key === KEY_STORE) {
    const dialog = $("key-dialog");
    if (dialog.open) dialog.close(); // asked here too: answered there ("Use key" here stored "")
    forgetWhatWasRead();
    restartEvents();
    wakeMetrics();
  }
});

async function followEvents(signal) {
  let backoff = 500;
  while (!signal.aborted) {
    try {
      const res = await api("/models/events", { signal, headers: { Accept: "text/event-stream" } });
      if (!res.ok) throw new Error(await errorText(res));
      setLive(true);
      notice("", "events");
      backoff = 500;
      await refreshModels(); // after subscribing: nothing between the two is missed
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          for (const line of block.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const ev = JSON.parse(line.slice(6));
            onEvent(ev);
            if (channel) channel.postMessage({ ev });
          }
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof Forbidden) {
        notice(err.message);
        setLive(false, "not allowed");
        return; // another key (the key dialog) restarts the stream
      }
      if (err instanceof AuthNeeded) {
        setLive(false, "key needed");
        return; // the key dialog restarts the stream
      }
      notice(`live updates: ${err.message}`, "events"); // e.g. too many subscribers: say so
    }
    setLive(false);
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

function setLive(on, text) {
  liveNow = [on, text];
  if (channel && leading) channel.postMessage({ live: liveNow });
  showLive(on, text);
}

function showLive(on, text) {
  // Not following the server: what is shown may be out of date (a restart unloaded models).
  document.body.classList.toggle("stale", !on);
  const el = $("live");
  el.className = on ? "live on" : "live off";
  el.textContent = text || (on ? "live" : "reconnecting");
}

// The notice line holds one text of each kind: the listing's ("listing": memory over the
// budget, a refused listing or events stream) and the last button's refusal ("action"). The
// listing's is rewritten at every model event; an action's stays until the next action.
const notices = new Map();
function notice(text, kind = "listing") {
  if (text) notices.set(kind, text);
  else notices.delete(kind);
  const all = [...notices.values()];
  $("notice").hidden = all.length === 0;
  $("notice").textContent = all.join(" ");
}

// A button's action: whatever fails (a refusal, a 403 for a key without `admin`, the network)
// is shown in the notice, never thrown into the page.
async function modelAction(path, body) {
  notice("", "action");
  try {
    const res = await api(path, { method: "POST", json: body });
    if (!res.ok) notice(await errorText(res), "action");
  } catch (err) {
    notice(err.message, "action");
  }
}

function loadModel(id) {
  return modelAction("/models/load", { model: id });
}

function unloadModel(id) {
  const entry = state.models.get(id);
  if (!entry) return Promise.resolve();
  let force = false;
  if (entry.pinned) {
    if (!confirm(`${entry.id} is pinned. Unload it anyway?`)) return Promise.resolve();
    force = true;
  }
  return modelAction("/models/unload", { model: entry.id, force });
}

// -- rendering ------------------------------------------------------------------------------

function render() {
  renderMemory();
  renderModels();
  renderRoutes();
  renderModelChoices();
}

function renderMemory() {
  const used = state.used; // what the budget counts (spare workers too), as GET /models says
  const pct = state.budget ? Math.min(100, (100 * used) / state.budget) : 0;
  $("memory-fill").style.width = `${pct}%`;
  $("memory-fill").className = pct > 90 ? "fill hot" : "fill";
  $("memory-text").textContent = `${mib(used)} / ${mib(state.budget)}`;
}

function gauge(name, model) {
  const g = state.gauges[name];
  return g && model in g ? g[model] : undefined;
}

function modelRow(m) {
  const status = m.status.value;
  const remote = m.source === "remote";
  const memory = gauge("memory_bytes", m.id) ?? m.memory_bytes;
  const pct = state.budget && memory ? Math.min(100, (100 * memory) / state.budget) : 0;
  const runtime = m.runtime || {};
  const busy = gauge("slots_busy", m.id) ?? runtime.slots_busy;
  const total = gauge("parallel", m.id) ?? runtime.parallel;
  const queued = gauge("queued", m.id) ?? m.queued_requests;
  const live = ["loaded", "loading", "waiting"].includes(status);
  const actions = remote
    ? h("span", { class: "muted" }, "remote")
    : h(
        "span",
        { class: "actions" },
        h("button", { type: "button", class: "load", disabled: live || status === "unloading", onclick: () => loadModel(m.id) }, "Load"),
        h("button", { type: "button", class: "unload", disabled: !live, onclick: () => unloadModel(m.id) }, "Unload"),
      );
  const facts = remote
    ? [m.provider, m.upstream_model, m.task === "embed" ? "embeddings" : null]
    : [m.engine, m.format, m.quantization, m.task === "embed" ? "embeddings" : null];
  return h(
    "tr",
    { dataset: { model: m.id } },
    h("td", { class: "id" }, m.id, m.pinned ? h("span", { class: "tag" }, "pinned") : null,
      m.aliases && m.aliases.length ? h("div", { class: "muted" }, m.aliases.join(", ")) : null),
    h("td", {},
      h("span", { class: `status s-${status}`, "data-role": "status" }, status),
      m.status.queue_position ? h("span", { class: "muted" }, ` #${m.status.queue_position}`) : null,
      m.status.error ? h("div", { class: "error", "data-role": "error" }, m.status.error) : null),
    h("td", {}, facts.filter(Boolean).join(" · ")),
    h("td", { class: "mem" },
      h("div", { class: "bar small" }, h("div", { class: "fill", style: { width: `${pct}%` } })),
      memory ? mib(memory) : m.memory_estimate_bytes ? `~${mib(m.memory_estimate_bytes)}` : "-"),
    h("td", {}, total ? `${busy ?? 0}/${total}` : "-"),
    h("td", {}, queued ?? "-"),
    h("td", {}, ago(m.last_used)),
    h("td", {}, m.load_seconds ? `${m.load_seconds.toFixed(2)} s` : "-"),
    h("td", {}, actions),
  );
}

// Redrawn at every metrics sample (2 s) and model event: a row's cells are replaced only where
// they changed, so a button pressed or a text selected across a redraw is still there.
function renderModels() {
  const table = $("models");
  const old = new Map([...table.children].map((tr) => [tr.dataset.model, tr]));
  const rows = [...state.models.values()].map((m) => {
    const row = modelRow(m);
    const kept = old.get(m.id);
    if (!kept || kept.children.length !== row.children.length) return row;
    [...row.children].forEach((cell, i) => {
      if (!kept.children[i].isEqualNode(cell)) kept.children[i].replaceWith(cell);
    });
    return kept;
  });
  rows.forEach((row, i) => {
    if (table.children[i] !== row) table.insertBefore(row, table.children[i] || null);
  });
  while (table.children.length > rows.length) table.lastChild.remove();
}

function renderRoutes() {
  $("no-routes").hidden = state.routes.length > 0;
  const rows = state.routes.map((r) => {
    const recent = state.fallbacks.filter((f) => f.route === r.name);
    return h(
      "tr",
      { dataset: { route: r.name } },
      h("td", { class: "id" }, r.name),
      h("td", {}, r.strategy),
      h("td", {}, r.status.order.map((t, i) => h("span", { class: "chip" }, `${i + 1}. ${t}`))),
      h("td", {}, Object.entries(r.status.breakers).map(([t, b]) =>
        h("span", { class: `chip b-${b}` }, `${t}: ${b}`))),
      h("td", {}, recent.length
        ? recent.slice(-5).map((f) => h("div", {}, `${new Date(f.time).toLocaleTimeString()} ${f.target}: ${f.error} ×${f.count}`))
        : h("span", { class: "muted" }, "none")),
    );
  });
  $("routes").replaceChildren(...rows);
}

function renderModelChoices() {
  const label = (id) => (state.models.get(id)?.status.value === "error" ? `${id} (error)` : id);
  const choose = (select, items) => {
    const current = select.value;
    // empty groups are left out (a null given to replaceChildren is a text node "null")
    select.replaceChildren(...items.filter(([, ids]) => ids.length).map(([group, ids]) =>
      h("optgroup", { label: group }, ids.map((id) => h("option", { value: id }, label(id))))));
    if ([...select.options].some((o) => o.value === current)) select.value = current;
  };
  const all = [...state.models.values()];
  const local = all.filter((m) => m.source !== "remote");
  const remote = all.filter((m) => m.source === "remote");
  const ids = (models, embeds) => models.filter((m) => (m.task === "embed") === embeds).map((m) => m.id);
  // a model in error stays (marked): the next request loads it again, or says why it cannot;
  // dropping it switched the chat to another model without a word
  choose($("pg-model"), [
    ["models", ids(local, false)],
    ["routes", state.routes.map((r) => r.name)],
    ["remote", ids(remote, false)],
  ]);
  choose($("emb-model"), [["models", ids(local, true)], ["remote", ids(remote, true)]]);
}

// -- metrics ----------------------------------------------------------------------------------

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return samples;
}

function summarize(samples) {
  const sum = (name, keep = () => true) =>
    samples.filter((s) => s.name === name && keep(s.labels)).reduce((a, s) => a + s.value, 0);
  const byModel = (name) =>
    Object.fromEntries(samples.filter((s) => s.name === name).map((s) => [s.labels.model, s.value]));
  return {
    time: Date.now(),
    requests: sum("llm_router_requests_total"),
    // outcomes: ok, cancelled, a finish reason (stop, length...) or an error's class name;
    // a client's mistakes (a wrong model, a bad field, a refused key) are not the server's
    errors: sum("llm_router_requests_total", (l) => /^[A-Z]/.test(l.outcome || "") && !CLIENT_ERRORS.has(l.outcome)),
    tokens: sum("llm_router_tokens_total", (l) => l.kind === "completion"),
    ttftSum: sum("llm_router_time_to_first_token_seconds_sum"),
    ttftCount: sum("llm_router_time_to_first_token_seconds_count"),
    fallbacks: samples.filter((s) => s.name === "llm_router_fallbacks_total"),
    memoryUsed: samples.find((s) => s.name === "llm_router_memory_used_bytes")?.value,
    gauges: {
      slots_busy: byModel("llm_router_engine_slots_busy"),
      parallel: byModel("llm_router_engine_parallel"),
      queued: byModel("llm_router_model_queued_requests"),
      memory_bytes: byModel("llm_router_model_memory_bytes"),
    },
  };
}

function push(series, value) {
  series.push(value);
  if (series.length > HISTORY) series.shift();
}

function sample(now) {
  const prev = state.last;
  state.last = now;
  state.gauges = now.gauges;
  if (now.memoryUsed !== undefined) state.used = now.memoryUsed; // as GET /models counts it
  if (!prev) return;
  const dt = (now.time - prev.time) / 1000;
  const rate = (k) => Math.max(0, now[k] - prev[k]) / dt;
  push(state.series.rps, rate("requests"));
  push(state.series.tps, rate("tokens"));
  push(state.series.err, rate("errors"));
  const n = now.ttftCount - prev.ttftCount;
  push(state.series.ttft, n > 0 ? (1000 * (now.ttftSum - prev.ttftSum)) / n : null);
  const before = new Map(prev.fallbacks.map((s) => [JSON.stringify(s.labels), s.value]));
  for (const s of now.fallbacks) {
    const count = s.value - (before.get(JSON.stringify(s.labels)) || 0);
    if (count > 0) state.fallbacks.push({ time: now.time, ...s.labels, count });
  }
  state.fallbacks = state.fallbacks.slice(-50);
}

function draw(canvas, values, color) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = "#e3e7ee";
  ctx.beginPath();
  ctx.moveTo(0, height - 0.5);
  ctx.lineTo(width, height - 0.5);
  ctx.stroke();
  const max = Math.max(1e-9, ...values.filter((v) => v !== null));
  const step = width / (HISTORY - 1);
  const x0 = width - step * (values.length - 1);
  ctx.strokeStyle = color;
  ctx.fillStyle = color + "22";
  ctx.lineWidth = 2;
  ctx.beginPath();
  let started = false;
  values.forEach((v, i) => {
    const x = x0 + i * step;
    const y = height - 4 - ((v || 0) / max) * (height - 12);
    started ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    started = true;
  });
  ctx.stroke();
  ctx.lineTo(width, height);
  ctx.lineTo(x0, height);
  ctx.fill();
  ctx.fillStyle = "#8a94a6";
  ctx.font = "10px sans-serif";
  ctx.fillText(`max ${max < 10 ? max.toFixed(2) : max.toFixed(0)}`, 4, 12);
}

function renderCharts() {
  const last = (s) => (s.length ? s[s.length - 1] : null);
  const fmt = (v, unit = "") => (v === null || v === undefined ? "-" : `${v < 10 ? v.toFixed(2) : v.toFixed(0)}${unit}`);
  const ttft = [...state.series.ttft].reverse().find((v) => v !== null);
  $("v-rps").textContent = fmt(last(state.series.rps));
  $("v-tps").textContent = fmt(last(state.series.tps));
  $("v-ttft").textContent = fmt(ttft, " ms");
  $("v-err").textContent = fmt(last(state.series.err));
  draw($("c-rps"), state.series.rps, "#3b6fd8");
  draw($("c-tps"), state.series.tps, "#1f9d6b");
  draw($("c-ttft"), state.series.ttft, "#c27c0e");
  draw($("c-err"), state.series.err, "#d0453f");
}

function metricsNotice(text) {
  $("metrics-notice").hidden = !text;
  $("metrics-notice").textContent = text || "";
}

let wakeMetrics = () => {};

// Waits `ms`, or less if the key changes (wakeMetrics): then resolves true.
function metricsPause(ms) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    wakeMetrics = () => {
      clearTimeout(timer);
      resolve(true);
    };
  });
}

const METRICS_SCOPE_HINT =
  "The charts read /metrics, which needs a key with the 'admin' scope unless the server's " +
  "configuration sets gateway.metrics_public: true.";

// Every SAMPLE_MS while /metrics answers; refused (401, 403), the notice says why and the page
// asks again less and less often (up to once a minute), at once when the key changes.
async function followMetrics() {
  let pause = SAMPLE_MS;
  for (;;) {
    try {
      const res = await api("/metrics", { ask: false }); // the events stream asks for a key
      if (res.ok) {
        pause = SAMPLE_MS;
        metricsNotice("");
        sample(summarize(parseMetrics(await res.text())));
        renderCharts();
        renderMemory();
        renderModels();
        renderRoutes();
      }
    } catch (err) {
      if (err instanceof AuthNeeded) {
        const reason = err.message.replace(/\.?$/, ".");
        metricsNotice(err instanceof Forbidden ? `${reason} ${METRICS_SCOPE_HINT}` : reason);
        pause = Math.min(pause * 2, 60000);
      }
      // otherwise the events stream reports the connection; the charts just wait
    }
    if (await metricsPause(pause)) pause = SAMPLE_MS;
  }
}

// -- playground -----------------------------------------------------------------------------

function addMessage(role, text) {
  const body = h("div", { class: "text" }, text);
  const el = h("div", { class: `msg ${role}`, "data-role": role }, h("div", { class: "who" }, role), body);
  $("pg-messages").append(el);
  $("pg-messages").scrollTop = $("pg-messages").scrollHeight;
  return body;
}

async function* sseData(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        if (line === "data: [DONE]") return;
        yield JSON.parse(line.slice(6));
      }
    }
  }
}

async function send(ev) {
  ev.preventDefault();
  const text = $("pg-input").value.trim();
  if (!text || state.abort) return;
  if (!$("pg-model").value) {
    $("pg-stats").textContent = "No model to ask: the list of models needs a key with the 'read' scope.";
    return;
  }
  $("pg-input").value = "";
  state.chat.push({ role: "user", content: text });
  const asked = addMessage("user", text);
  const out = addMessage("assistant", "");
  const system = $("pg-system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.chat] : [...state.chat];
  const body = {
    model: $("pg-model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  // an empty field is left out: the model's own default, not 0 (greedy, or no tokens at all)
  const temperature = $("pg-temperature").value.trim();
  const maxTokens = $("pg-max-tokens").value.trim();
  if (temperature !== "") body.temperature = Number(temperature);
  if (maxTokens !== "") body.max_tokens = Number(maxTokens);
  state.abort = new AbortController();
  $("pg-send").disabled = true;
  $("pg-stop").disabled = false;
  $("pg-stats").textContent = "waiting...";
  const started = performance.now();
  let first = null;
  let answer = "";
  let usage = null;
  let served = body.model;
  try {
    const res = await api("/v1/chat/completions", { method: "POST", json: body, signal: state.abort.signal });
    if (!res.ok) throw new Error(await errorText(res));
    served = res.headers.get("x-llm-router-model") || served;
    const route = res.headers.get("x-llm-router-route");
    for await (const chunk of sseData(res)) {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) first = performance.now();
        answer += delta.content;
        out.textContent = answer;
      }
    }
    const seconds = (performance.now() - (first ?? started)) / 1000;
    const tokens = usage ? usage.completion_tokens : null;
    $("pg-stats").replaceChildren(
      h("span", { "data-role": "served-by" }, `served by ${served}`),
      tokens !== null ? ` · ${tokens} tokens · ${(tokens / Math.max(seconds, 1e-3)).toFixed(1)} tok/s` : "",
      first !== null ? ` · first token ${(first - started).toFixed(0)} ms` : "",
      route ? ` · ${route}` : "",
    );
  } catch (err) {
    if (err.name !== "AbortError") {
      out.parentElement.classList.add("failed");
      out.textContent = answer + (answer ? "\n" : "") + `error: ${err.message}`;
    }
    $("pg-stats").textContent = err.name === "AbortError" ? "stopped" : "";
  } finally {
    // a turn without an answer (refused, failed, stopped at once) leaves the history: the
    // next question would follow the unanswered one
    if (answer) state.chat.push({ role: "assistant", content: answer });
    else {
      state.chat.pop(); // and the screen says so: it showed the question as asked
      asked.parentElement.classList.add("left-out");
      if (!out.textContent) out.textContent = "stopped before an answer: this question is left out of the conversation";
    }
    state.abort = null;
    $("pg-send").disabled = false;
    $("pg-stop").disabled = true;
  }
}

async function embed() {
  const input = $("emb-input").value.trim();
  const model = $("emb-model").value;
  if (!input || !model) return;
  $("emb-result").textContent = "...";
  try {
    const res = await api("/v1/embeddings", { method: "POST", json: { model, input } });
    if (!res.ok) throw new Error(await errorText(res));
    const body = await res.json();
    const v = body.data[0].embedding;
    $("emb-result").textContent =
      `${v.length} dimensions · ${body.usage.prompt_tokens} tokens · [${v.slice(0, 6).map((x) => x.toFixed(4)).join(", ")}, ...]`;
  } catch (err) {
    $("emb-result").textContent = `error: ${err.message}`;
  }
}

function setupPlayground() {
  $("pg-form").addEventListener("submit", send);
  $("pg-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) send(ev); // not mid-IME
  });
  $("pg-stop").addEventListener("click", () => state.abort && state.abort.abort());
  $("pg-clear").addEventListener("click", () => {
    state.chat = [];
    $("pg-messages").replaceChildren();
    $("pg-stats").textContent = "";
  });
  $("emb-run").addEventListener("click", embed);
}

// -- tabs and start -------------------------------------------------------------------------

function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const s of document.querySelectorAll(".tab")) s.classList.toggle("active", s.id === `tab-${name}`);
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  if (name === "metrics") renderCharts();
}

function start() {
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  const initial = location.hash.slice(1);
  if (document.getElementById(`tab-${initial}`)) showTab(initial);
  setupKey();
  setupPlayground();
  restartEvents();
  followMetrics();
  // Requests change no model's status, so no event says a model was used: the listing is
  // read again every few seconds ("last used" stayed where the last event left it, and a
  // key that may not read /metrics saw no slots or queue move; found from outside).
  setInterval(() => {
    if (!document.hidden) refreshModels().catch(() => {});
  }, LISTING_EVERY_MS);
}

document.addEventListener("DOMContentLoaded", start);
