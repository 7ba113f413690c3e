// The Projectionist dashboard: polls the JSON API every second, no dependencies.
"use strict";

const REFRESH_MS = 1000;
const SPARK_POINTS = 60;
const HISTORY_MS = 2000; // the daemon samples the lag every 2 s
const history = new Map(); // projection/partition -> recent events/s
let info = { actions_enabled: false };
let token = sessionStorage.getItem("projectionist-token") || "";

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}

const fmtInt = (n) => Number(n).toLocaleString("en-US");
const fmtRate = (n) => (n >= 100 ? fmtInt(Math.round(n)) : Number(n).toFixed(1));

function sparkline(values) {
  const w = 80, h = 18;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const max = Math.max(1, ...values);
  // The samples so far span the width (up to SPARK_POINTS of them: a minute).
  const step = w / Math.max(1, values.length - 1);
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`)
    .join(" ");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  return svg;
}

function say(text, bad = false) {
  const m = $("#message");
  m.textContent = text;
  m.className = bad ? "bad" : "";
  m.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { m.hidden = true; }, 6000);
}

async function action(path, what) {
  if (!token) {
    say(`${what}: enter the API token first (top right)`, true);
    return;
  }
  try {
    const res = await fetch(path, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    const body = await res.json().catch(() => ({}));
    if (res.ok) say(`${what}: done`);
    else say(`${what}: ${body.error || res.statusText} (${res.status})`, true);
  } catch (e) {
    say(`${what}: ${e}`, true);
  }
  refresh();
}

function actionButton(label, path, what, opts = {}) {
  return el("button", {
    type: "button",
    class: opts.danger ? "danger" : "",
    "data-action": opts.name || label.toLowerCase(),
    disabled: !info.actions_enabled,
    title: info.actions_enabled ? what : "actions are disabled: the daemon has no API token",
    onclick: () => {
      if (opts.confirm && !window.confirm(opts.confirm)) return;
      action(path, what);
    },
  }, label);
}

function renderProjections(statuses) {
  const body = $("#projections tbody");
  const rows = [];
  for (const s of statuses) {
    const key = `${s.name}/${s.partition}`;
    const h = history.get(key) || [];
    h.push(s.events_per_second);
    while (h.length > SPARK_POINTS) h.shift();
    history.set(key, h);
    const name = encodeURIComponent(s.name);
    const lagging = (info.max_lag_events && s.lag_events > info.max_lag_events) ||
      (info.max_lag_seconds && s.lag_seconds > info.max_lag_seconds);
    const paused = s.state === "paused" || s.state === "stopped";
    rows.push(el("tr", { "data-projection": s.name, "data-state": s.state, class: `${s.state}${lagging ? " lagging" : ""}` },
      el("td", { text: s.partition ? `${s.name} #${s.partition}` : s.name }),
      el("td", {}, el("span", { class: `state ${s.state}`, "data-field": "state", text: s.state })),
      el("td", { class: "num", "data-field": "checkpoint", text: fmtInt(s.checkpoint) }),
      el("td", { class: "num", text: fmtInt(s.head) }),
      el("td", { class: "num lag", "data-field": "lag", text: fmtInt(s.lag_events) }),
      el("td", { class: "num lag", text: s.lag_seconds.toFixed(1) }),
      el("td", { class: "num", text: fmtRate(s.events_per_second) }),
      el("td", {}, sparkline(h)),
      el("td", { class: "num", "data-field": "errors", text: fmtInt(s.errors) }),
      el("td", { class: "num", "data-field": "dead-letters", text: fmtInt(s.dead_letters) }),
      el("td", {},
        paused
          ? actionButton("Resume", `/api/projections/${name}/resume`, `resume ${s.name}`)
          : actionButton("Pause", `/api/projections/${name}/pause`, `pause ${s.name}`),
        actionButton("Rebuild", `/api/projections/${name}/rebuild`, `rebuild ${s.name}`, {
          danger: true,
          confirm: `Rebuild ${s.name}? This empties its read model and replays every event into it.`,
        })),
    ));
    const note = s.state !== "running" && s.reason ? `${s.state}: ${s.reason}` : (s.state === "stopped" ? "stopped" : "");
    const lastError = s.last_error && (s.state === "stopped" || s.dead_letters > 0) &&
      !(s.reason || "").includes(s.last_error) ? `last error: ${s.last_error}` : "";
    if (note || lastError) {
      rows.push(el("tr", { class: `note ${s.state}` },
        el("td", { colspan: 11, text: [note, lastError].filter(Boolean).join(" — ") })));
    }
  }
  body.replaceChildren(...rows);
}

// The partitions of every projection: who holds each (its lease's node, for partitioned
// projections), where its checkpoint is and how far behind.
function renderPartitions(statuses) {
  const body = $("#partitions tbody");
  body.replaceChildren(...statuses.map((s) => el("tr", {
    "data-partition": `${s.name}/${s.partition}`, "data-projection": s.name, class: s.state,
  },
    el("td", { text: s.name }),
    el("td", { class: "num", "data-field": "partition", text: `${s.partition} of ${s.partitions}` }),
    el("td", { class: "owner", "data-field": "owner", text: s.owner || (s.partitions > 1 ? "no live lease" : "any runner (not partitioned)") }),
    el("td", { class: "num", "data-field": "checkpoint", text: fmtInt(s.checkpoint) }),
    el("td", { class: "num lag", "data-field": "lag", text: fmtInt(s.lag_events) }),
    el("td", { class: "num lag", "data-field": "lag-seconds", text: s.lag_seconds.toFixed(1) }),
  )));
}

// One chart per projection: its lag (events) over the last 15 minutes, from the daemon's
// in-memory samples (/api/lag-history).
function lagChart(name, samples, windowMs) {
  const w = 360, h = 90, left = 44, bottom = 16;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "lag-chart");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("data-chart", name);
  svg.setAttribute("data-points", String(samples.length));
  const now = samples.length ? samples[samples.length - 1].at_ms : Date.now();
  const max = Math.max(1, ...samples.map((p) => p.lag_events));
  const x = (t) => left + ((t - (now - windowMs)) / windowMs) * (w - left - 4);
  const y = (v) => 4 + (1 - v / max) * (h - bottom - 8);
  const text = (tx, ty, anchor, label) => {
    const t = document.createElementNS("http://www.w3.org/2000/svg", "text");
    t.setAttribute("x", tx);
    t.setAttribute("y", ty);
    t.setAttribute("text-anchor", anchor);
    t.textContent = label;
    svg.append(t);
  };
  const axis = document.createElementNS("http://www.w3.org/2000/svg", "path");
  axis.setAttribute("class", "axis");
  axis.setAttribute("d", `M${left},4 V${h - bottom} H${w - 4}`);
  svg.append(axis);
  text(left - 4, 12, "end", fmtInt(max));
  text(left - 4, h - bottom, "end", "0");
  text(left, h - 3, "start", `${Math.round(windowMs / 60000)} min ago`);
  text(w - 4, h - 3, "end", "now");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", samples.map((p) => `${x(p.at_ms).toFixed(1)},${y(p.lag_events).toFixed(1)}`).join(" "));
  svg.append(line);
  return svg;
}

function renderLagHistory(history) {
  const windowMs = history.window_seconds * 1000;
  const charts = Object.entries(history.projections).map(([name, samples]) => {
    const last = samples[samples.length - 1];
    return el("figure", { class: "chart", "data-projection": name },
      el("figcaption", {}, el("strong", { text: name }),
        el("span", { class: "muted", text: last ? ` lag ${fmtInt(last.lag_events)} events, ${last.lag_seconds.toFixed(1)} s` : "" })),
      lagChart(name, samples, windowMs));
  });
  $("#lag-charts").replaceChildren(...charts);
  $("#no-lag-history").hidden = charts.length !== 0;
}

// Dead letters whose details are open, kept across refreshes.
const openLetters = new Set();

function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function letterDetails(d) {
  return el("tr", { class: "dl-details", "data-details-for": String(d.id) },
    el("td", { colspan: 9 },
      el("div", { class: "details" },
        el("div", {}, el("h3", { text: "Payload" }), el("pre", { class: "payload", "data-field": "payload", text: pretty(d.event.data) })),
        el("div", {}, el("h3", { text: "Metadata" }), el("pre", { class: "payload", "data-field": "metadata", text: pretty(d.event.metadata) })),
        el("div", {}, el("h3", { text: "Error" }), el("pre", { class: "dl-error", "data-field": "error", text: d.error }),
          el("p", { class: "muted", text: `event ${d.event.event_id} · first failed ${new Date(d.first_failed_at).toLocaleString()}` })))));
}

function toggleLetter(id) {
  if (openLetters.has(id)) openLetters.delete(id);
  else openLetters.add(id);
  renderDeadLetters(lastLetters);
}

let lastLetters = [];

function renderDeadLetters(letters) {
  lastLetters = letters;
  const body = $("#dead-letters tbody");
  body.replaceChildren(...letters.flatMap((d) => [el("tr", {
    "data-dead-letter": String(d.id), "data-projection": d.projection, class: "clickable",
    title: "show the payload and the error", "aria-expanded": String(openLetters.has(d.id)),
    onclick: (e) => { if (!e.target.closest("button")) toggleLetter(d.id); },
  },
    el("td", { class: "num", text: String(d.id) }),
    el("td", { text: d.projection }),
    el("td", { class: "num", text: fmtInt(d.event.position) }),
    el("td", { text: d.event.stream_id }),
    el("td", { text: d.event.event_type }),
    el("td", { class: "num", text: String(d.attempts) }),
    el("td", { text: new Date(d.last_failed_at).toLocaleString() }),
    el("td", { class: "error", text: d.error }),
    el("td", {},
      actionButton("Retry", `/api/dead-letters/${d.id}/retry`, `retry dead letter ${d.id}`),
      actionButton("Discard", `/api/dead-letters/${d.id}/discard`, `discard dead letter ${d.id}`, {
        danger: true,
        confirm: `Discard dead letter ${d.id}? Its event will not be applied.`,
      })),
  ), ...(openLetters.has(d.id) ? [letterDetails(d)] : [])]));
  $("#dead-letters").hidden = letters.length === 0;
  $("#no-dead-letters").hidden = letters.length !== 0;
  $("#dl-count").textContent = letters.length ? `(${letters.length})` : "";
}

function renderHealth(ready) {
  const h = $("#health");
  h.textContent = ready.ready ? "ready" : "not ready";
  h.className = `pill ${ready.ready ? "ok" : "bad"}`;
  const list = $("#reasons");
  list.replaceChildren(...(ready.reasons || []).map((r) => el("li", { text: r })));
  list.hidden = !ready.reasons || ready.reasons.length === 0;
}

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store" });
  const body = await res.json();
  if (!res.ok && !(path === "/health/ready" && res.status === 503)) {
    throw new Error(body.error || `${path}: ${res.status}`);
  }
  return body;
}

let inFlight = false;
async function refresh() {
  if (inFlight) return;
  inFlight = true;
  try {
    const [i, statuses, letters, ready] = await Promise.all([
      getJson("/api/info"), getJson("/api/projections"), getJson("/api/dead-letters"), getJson("/health/ready"),
    ]);
    info = i;
    $("#database").textContent = `${i.database} · v${i.version}`;
    renderHealth(ready);
    renderProjections(statuses);
    renderPartitions(statuses);
    renderDeadLetters(letters);
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("#updated").textContent = `cannot reach the daemon: ${e.message || e}`;
    $("#health").textContent = "unreachable";
    $("#health").className = "pill bad";
  } finally {
    inFlight = false;
  }
}

$("#token").value = token;
$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("projectionist-token", token);
  say(token ? "API token set for this tab" : "API token cleared");
});

async function refreshHistory() {
  try {
    renderLagHistory(await getJson("/api/lag-history"));
  } catch (e) {
    $("#no-lag-history").textContent = `lag history: ${e.message || e}`;
    $("#no-lag-history").hidden = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
refreshHistory();
setInterval(refreshHistory, HISTORY_MS);
