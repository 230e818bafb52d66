/**
 * @module
 * The live dashboard served at `GET /` on the admin listener: one self-contained HTML page with
 * inline CSS, inline JavaScript and SVG charts drawn by that script. Nothing is loaded from
 * anywhere but the admin API on the same origin, so the compiled binary carries the whole UI
 * and it works on a machine with no internet.
 *
 * How the page works:
 * - It polls `GET /api/services` once a second (a new poll starts 1 s after the previous one
 *   started, never two at once) and sends `Authorization: Bearer <token>` when a token is kept
 *   in `sessionStorage`. A 401 shows a small token form; what the user types is stored there.
 * - Backends are grouped by service: a heading per service with its policy and a table of its
 *   backends, whose buttons name the service. A routes table (name, match, action) follows, in
 *   match order. One backend URL in two services is two rows and two chart lines.
 * - Request and error rates are the deltas of the `requests` and `errors` counters between two
 *   polls divided by the time between the API's `time` stamps. A refresh sooner than 0.5 s after
 *   the previous sample (after a button press) updates the table but adds no chart point, so
 *   rates stay smooth.
 * - Charts keep one point per poll per backend (per service) in ring buffers covering the last 5
 *   minutes.
 * - Every string from the API reaches the DOM through `textContent` or `setAttribute`; the page
 *   never parses HTML at run time. A Content-Security-Policy (with hashes of the inline script
 *   and style) confines it to its own origin, so even a mistake could not load or send data
 *   elsewhere.
 */

const STYLE = `
:root {
  --bg: #f6f7f9; --panel: #fff; --ink: #1f2933; --muted: #616e7c; --line: #e4e7eb;
  --accent: #2563eb; --bad: #b91c1c;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: var(--bg);
}
* { box-sizing: border-box; }
body { margin: 0; }
header {
  display: flex; flex-wrap: wrap; align-items: baseline; gap: 0.4rem 1.5rem;
  padding: 0.9rem 1.5rem; background: var(--panel); border-bottom: 1px solid var(--line);
}
h1 { font-size: 1.15rem; margin: 0 auto 0 0; }
h2 { font-size: 0.95rem; margin: 0 0 0.4rem; }
h2 .policy { font-weight: 600; font-size: 0.8rem; color: var(--accent); background: #dbeafe;
  padding: 0.05rem 0.5rem; border-radius: 999px; margin-left: 0.5rem; }
h2 .meta { font-weight: 400; font-size: 0.85rem; margin-left: 0.5rem; }
.meta { color: var(--muted); }
.meta b { color: var(--ink); font-weight: 600; }
#conn { font-weight: 600; padding: 0.1rem 0.55rem; border-radius: 999px; }
#conn::before { content: "\\25CF  "; }
#conn[data-state="live"] { color: #15803d; background: #dcfce7; }
#conn[data-state="connecting"] { color: var(--muted); background: var(--line); }
#conn[data-state="lost"] { color: var(--bad); background: #fee2e2; }
#conn[data-state="auth"] { color: #a16207; background: #fef9c3; }
main { padding: 1rem 1.5rem 2rem; max-width: 1400px; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 0.9rem 1rem; margin-bottom: 1rem; }
#message { display: flex; gap: 1rem; align-items: center; justify-content: space-between;
  padding: 0.55rem 0.9rem; border-radius: 6px; margin-bottom: 1rem; }
#message[data-kind="error"] { background: #fee2e2; color: var(--bad); border: 1px solid #fca5a5; }
#message[data-kind="info"] { background: #e0f2fe; color: #075985; border: 1px solid #7dd3fc; }
#message[hidden], #token-form[hidden] { display: none; }
#message button { border: 0; background: none; font-size: 1.1rem; cursor: pointer; color: inherit; }
#token-form { display: flex; flex-wrap: wrap; gap: 0.6rem; align-items: center;
  background: #fefce8; border: 1px solid #fde047; border-radius: 8px; padding: 0.7rem 1rem;
  margin-bottom: 1rem; }
#token-form label { font-weight: 600; }
#token-form input { font: inherit; padding: 0.3rem 0.5rem; border: 1px solid #cbd2d9;
  border-radius: 4px; min-width: 16rem; margin-left: 0.5rem; }
#token-form button { font: inherit; padding: 0.3rem 0.9rem; border: 0; border-radius: 4px;
  background: var(--accent); color: #fff; cursor: pointer; }
.scroll { overflow-x: auto; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 0.45rem 0.6rem; text-align: left; border-bottom: 1px solid var(--line);
  white-space: nowrap; }
th { color: var(--muted); font-weight: 600; font-size: 0.8rem; text-transform: uppercase;
  letter-spacing: 0.03em; }
td.num, th.num { text-align: right; }
tbody tr:last-child td { border-bottom: 0; }
.stale tbody { opacity: 0.5; }
.url, .route-text { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85rem; }
.swatch { display: inline-block; width: 0.7rem; height: 0.7rem; border-radius: 2px;
  margin-right: 0.45rem; vertical-align: -0.05rem; }
.badge { display: inline-block; min-width: 5.2rem; text-align: center; padding: 0.08rem 0.5rem;
  border-radius: 999px; font-size: 0.8rem; font-weight: 600; }
.s-up { color: #166534; background: #dcfce7; }
.s-down { color: #991b1b; background: #fee2e2; }
.s-ejected { color: #9a3412; background: #ffedd5; }
.s-draining { color: #1e40af; background: #dbeafe; }
.s-disabled { color: #374151; background: #e5e7eb; }
.s-unknown { color: #6b21a8; background: #f3e8ff; }
.check-ok { color: #166534; }
.check-fail { color: var(--bad); }
.when { color: var(--muted); margin-left: 0.4rem; font-size: 0.85rem; }
.actions { display: flex; gap: 0.35rem; }
.actions button { font: inherit; font-size: 0.8rem; padding: 0.2rem 0.6rem; cursor: pointer;
  border: 1px solid #cbd2d9; border-radius: 4px; background: #fff; color: var(--ink); }
.actions button:hover:enabled { border-color: var(--accent); color: var(--accent); }
.actions button:disabled { opacity: 0.4; cursor: default; }
#legend { display: flex; flex-wrap: wrap; gap: 0.3rem 1.2rem; list-style: none; margin: 0 0 0.6rem;
  padding: 0; }
#charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr));
  gap: 0.8rem 1.2rem; }
figure { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 0.2rem; }
figcaption small { color: var(--muted); font-weight: 400; margin-left: 0.4rem; }
svg { width: 100%; height: 190px; display: block; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .axis { fill: var(--muted); font-size: 11px; }
svg .series { fill: none; stroke-width: 1.6; stroke-linejoin: round; stroke-linecap: round; }
svg .p99 { stroke-dasharray: 5 3; stroke-width: 1.3; }
.empty { color: var(--muted); }
`;

// Plain JavaScript for the browser, kept free of backticks and "${" so it can live in this
// template literal unchanged.
const SCRIPT = `
"use strict";
(() => {
  const POLL_MS = 1000;
  const WINDOW_MS = 5 * 60 * 1000;
  // One point per poll for 5 minutes, with room for the extra refreshes after button presses.
  const CAPACITY = 360;
  // Samples closer together than this update the table but not the charts.
  const MIN_SAMPLE_GAP_MS = 500;
  const TOKEN_KEY = "lb-admin-token";
  const STATUSES = ["up", "down", "ejected", "draining", "disabled"];
  const PALETTE = ["#2563eb", "#db2777", "#0d9488", "#ea580c", "#7c3aed", "#65a30d", "#0891b2",
    "#a16207", "#4b5563", "#dc2626"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const ACTIONS = [["drain", "Drain"], ["enable", "Enable"], ["disable", "Disable"]];

  const $ = (id) => document.getElementById(id);
  const series = new Map(); // service + " " + url -> { color, ring, prev, rps, eps, label }
  const rows = new Map(); // service + " " + url -> { tr, cells, buttons }
  const groups = new Map(); // service -> { section, tbody, policy, summary, empty }
  let routesKey = null;
  let nextColor = 0;
  let timer = 0;
  let polling = false;
  let pollAgain = false;
  let legendKey = "";

  /** A fixed-size ring buffer: pushing beyond capacity drops the oldest item. */
  class Ring {
    constructor(capacity) { this.items = new Array(capacity); this.start = 0; this.size = 0; }
    push(item) {
      const capacity = this.items.length;
      this.items[(this.start + this.size) % capacity] = item;
      if (this.size < capacity) this.size++;
      else this.start = (this.start + 1) % capacity;
    }
    *[Symbol.iterator]() {
      for (let i = 0; i < this.size; i++) yield this.items[(this.start + i) % this.items.length];
    }
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const num = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);
  const clockTime = (ms) => new Date(ms).toLocaleTimeString([], { hour12: false });

  function formatRate(value) {
    if (value === null) return "\\u2013";
    return value < 10 ? value.toFixed(1) : String(Math.round(value));
  }

  function formatMs(value) {
    if (value === null) return "\\u2013";
    if (value < 1) return value.toFixed(2);
    return value < 100 ? value.toFixed(1) : String(Math.round(value));
  }

  // ---- API ---------------------------------------------------------------------------------

  function api(method, path, body) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      signal: AbortSignal.timeout(5000),
    });
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  async function poll() {
    clearTimeout(timer);
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = true;
    const started = Date.now();
    try {
      const response = await api("GET", "/api/services");
      const data = await readJson(response);
      if (response.status === 401) {
        askForToken();
      } else if (!response.ok || !data || !Array.isArray(data.services)) {
        throw new Error("HTTP " + response.status);
      } else {
        update(data, Date.now());
      }
    } catch (error) {
      setConnection("lost", String((error && error.message) || error));
    } finally {
      polling = false;
      const wait = pollAgain ? 0 : Math.max(0, POLL_MS - (Date.now() - started));
      pollAgain = false;
      timer = setTimeout(poll, wait);
    }
  }

  async function act(action, service, url) {
    const what = action + " " + url + " in " + service;
    try {
      const response = await api("POST", "/api/backends/" + action, { service, url });
      const data = await readJson(response);
      if (response.status === 401) {
        askForToken();
        showMessage("error", what + ": the admin token is missing or wrong");
      } else if (!response.ok) {
        const reason = data && typeof data.error === "string" ? data.error : "HTTP " + response.status;
        showMessage("error", what + " failed: " + reason);
      } else {
        const status = data && data.backend ? String(data.backend.status) : "?";
        showMessage("info", what + ": status is now " + status);
      }
    } catch (error) {
      showMessage("error", what + " failed: " + String((error && error.message) || error));
    }
    poll();
  }

  // ---- State -------------------------------------------------------------------------------

  function update(data, now) {
    setConnection("live");
    $("token-form").hidden = true;
    $("last-poll").textContent = clockTime(now);
    $("last-poll").setAttribute("title", String(data.time ?? ""));
    const stamp = Date.parse(data.time);
    const at = Number.isFinite(stamp) ? stamp : now;
    const services = data.services.filter((s) => s && Array.isArray(s.backends));
    const several = services.length > 1;
    const all = [];
    for (const service of services) {
      const name = String(service.name);
      for (const backend of service.backends) {
        const key = name + " " + String(backend.url);
        all.push({ key, service: name, backend });
        sample(key, several ? name + ": " + String(backend.url) : String(backend.url), backend, at, now);
      }
    }
    const seen = new Set(all.map((item) => item.key));
    for (const key of [...series.keys()]) if (!seen.has(key)) series.delete(key);
    renderServices(services);
    renderRoutes(Array.isArray(data.routes) ? data.routes : []);
    renderLegend(all);
    renderCharts(now);
    const up = all.filter((item) => item.backend.status === "up").length;
    $("summary").textContent = plural(services.length, "service") + ", " +
      plural(all.length, "backend") + ", " + up + " up";
    document.title = up + "/" + all.length + " up \u00b7 load balancer";
  }

  const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");

  function sample(key, label, backend, at, now) {
    let entry = series.get(key);
    if (!entry) {
      entry = { color: PALETTE[nextColor++ % PALETTE.length], ring: new Ring(CAPACITY), prev: null,
        rps: null, eps: null, label };
      series.set(key, entry);
    }
    entry.label = label;
    const requests = num(backend.requests);
    const errors = num(backend.errors);
    const prev = entry.prev;
    if (prev && at - prev.at < MIN_SAMPLE_GAP_MS) return;
    if (prev && requests !== null && errors !== null) {
      const seconds = (at - prev.at) / 1000;
      const dr = requests - prev.requests;
      const de = errors - prev.errors;
      // A counter that went backwards was reset (a reload re-created the backend): no rate.
      entry.rps = dr >= 0 ? dr / seconds : null;
      entry.eps = de >= 0 ? de / seconds : null;
    }
    entry.prev = requests === null || errors === null ? null : { at, requests, errors };
    const latency = backend.latencyMs || {};
    entry.ring.push({ t: now, rps: entry.rps, eps: entry.eps, p50: num(latency.p50),
      p99: num(latency.p99) });
  }

  // ---- Rendering: table --------------------------------------------------------------------

  function renderServices(services) {
    $("empty").hidden = services.length > 0;
    const container = $("services");
    const wanted = new Set();
    services.forEach((service, index) => {
      const name = String(service.name);
      wanted.add(name);
      let group = groups.get(name);
      if (!group) {
        group = createGroup(name);
        groups.set(name, group);
      }
      if (container.children[index] !== group.section) {
        container.insertBefore(group.section, container.children[index] || null);
      }
      fillGroup(group, name, service);
    });
    for (const [name, group] of groups) {
      if (!wanted.has(name)) {
        group.section.remove();
        groups.delete(name);
        for (const [key, row] of rows) {
          if (row.service === name) rows.delete(key);
        }
      }
    }
  }

  function createGroup(name) {
    const section = el("section", { class: "service", "data-service": name });
    const heading = section.appendChild(el("h2"));
    heading.append(el("span", { class: "service-name" }, name));
    const policy = heading.appendChild(el("span", { class: "policy" }));
    const summary = heading.appendChild(el("span", { class: "meta service-summary" }));
    const table = section.appendChild(el("div", { class: "scroll" })).appendChild(el("table"));
    const head = table.appendChild(el("thead")).appendChild(el("tr"));
    for (const [label, numeric] of [["Backend", false], ["Weight", true], ["Status", false],
      ["In flight", true], ["Req/s", true], ["Err/s", true], ["p50 ms", true], ["p99 ms", true],
      ["Last check", false], ["Actions", false]]) {
      head.append(el("th", numeric ? { class: "num" } : {}, label));
    }
    const tbody = table.appendChild(el("tbody"));
    const empty = section.appendChild(el("p", { class: "empty" }, "No backends."));
    return { section, tbody, policy, summary, empty };
  }

  function fillGroup(group, name, service) {
    group.policy.textContent = String(service.policy ?? "?");
    const backends = service.backends;
    const up = backends.filter((b) => b.status === "up").length;
    group.summary.textContent = up + " of " + plural(backends.length, "backend") + " up, " +
      String(num(service.available) ?? "?") + " available";
    group.empty.hidden = backends.length > 0;
    const wanted = new Set();
    backends.forEach((backend, index) => {
      const url = String(backend.url);
      const key = name + " " + url;
      wanted.add(key);
      let row = rows.get(key);
      if (!row) {
        row = createRow(name, url, key);
        rows.set(key, row);
      }
      // Move a row only when it is out of place, so a row being clicked is never detached.
      if (group.tbody.children[index] !== row.tr) {
        group.tbody.insertBefore(row.tr, group.tbody.children[index] || null);
      }
      fillRow(row, backend);
    });
    for (const [key, row] of rows) {
      if (row.service === name && !wanted.has(key)) {
        row.tr.remove();
        rows.delete(key);
      }
    }
  }

  function createRow(service, url, key) {
    const tr = el("tr", { "data-url": url, "data-service": service });
    const cells = {};
    for (const [name, numeric] of [["url", false], ["weight", true], ["status", false],
      ["inflight", true], ["rps", true], ["eps", true], ["p50", true], ["p99", true],
      ["check", false], ["actions", false]]) {
      cells[name] = tr.appendChild(el("td", { class: "c-" + name + (numeric ? " num" : "") }));
    }
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = series.get(key).color;
    cells.url.append(swatch, el("span", { class: "url" }, url));
    cells.status.append(el("span", { class: "badge" }));
    const box = cells.actions.appendChild(el("div", { class: "actions" }));
    const buttons = {};
    for (const [action, label] of ACTIONS) {
      const button = el("button", { type: "button", "data-action": action,
        "aria-label": label + " " + url + " in " + service }, label);
      button.addEventListener("click", () => act(action, service, url));
      buttons[action] = box.appendChild(button);
    }
    return { tr, cells, buttons, key, service };
  }

  function renderRoutes(routes) {
    const key = JSON.stringify(routes);
    if (key === routesKey) return;
    routesKey = key;
    const tbody = $("routes");
    tbody.replaceChildren();
    routes.forEach((route, index) => {
      const tr = el("tr", { "data-route": String(route.name) });
      tr.append(el("td", { class: "num" }, String(index + 1)),
        el("td", { class: "route-text" }, String(route.name ?? "")),
        el("td", { class: "route-text" }, String(route.match ?? "")),
        el("td", { class: "route-text" }, String(route.action ?? "")));
      tbody.append(tr);
    });
    $("no-routes").hidden = routes.length > 0;
    $("routes-table").hidden = routes.length === 0;
  }

  function fillRow(row, backend) {
    const entry = series.get(row.key);
    const status = String(backend.status);
    const known = STATUSES.includes(status);
    row.tr.setAttribute("data-status", status);
    row.cells.weight.textContent = String(backend.weight ?? "");
    const badge = row.cells.status.firstChild;
    badge.className = "badge s-" + (known ? status : "unknown");
    badge.textContent = status;
    row.cells.inflight.textContent = String(num(backend.inflight) ?? "\\u2013");
    row.cells.rps.textContent = formatRate(entry.rps);
    row.cells.eps.textContent = formatRate(entry.eps);
    const latency = backend.latencyMs || {};
    row.cells.p50.textContent = formatMs(num(latency.p50));
    row.cells.p99.textContent = formatMs(num(latency.p99));
    fillCheck(row.cells.check, backend.lastCheck);
    // Buttons that would change nothing are disabled (the API would accept them anyway).
    row.buttons.drain.disabled = status === "draining";
    row.buttons.enable.disabled = status !== "draining" && status !== "disabled";
    row.buttons.disable.disabled = status === "disabled";
  }

  function fillCheck(cell, check) {
    cell.replaceChildren();
    if (!check) {
      cell.textContent = "\\u2013";
      return;
    }
    const result = el("span", { class: check.ok ? "check-ok" : "check-fail" },
      (check.ok ? "\\u2713 " : "\\u2717 ") + String(check.detail ?? ""));
    const at = Date.parse(check.at);
    const when = el("span", { class: "when", title: String(check.at ?? "") },
      Number.isFinite(at) ? clockTime(at) : "");
    cell.append(result, when);
  }

  function renderLegend(items) {
    const key = items.map((item) => series.get(item.key).label).join(" ");
    if (key === legendKey) return;
    legendKey = key;
    const legend = $("legend");
    legend.replaceChildren();
    for (const item of items) {
      const entry = series.get(item.key);
      const swatch = el("span", { class: "swatch" });
      swatch.style.background = entry.color;
      const li = el("li");
      li.append(swatch, el("span", { class: "url" }, entry.label));
      legend.append(li);
    }
  }

  // ---- Rendering: charts -------------------------------------------------------------------

  // Charts are drawn at their on-screen size (re-measured at every poll), so text stays 11px.
  const H = 190, LEFT = 42, RIGHT = 12, TOP = 10, BOTTOM = 22;
  const MIN_SPAN_MS = 15 * 1000;
  const TICK_STEPS_MS = [5000, 10000, 15000, 30000, 60000];

  /** A y scale from 0 with at most 4 gridline steps of 1, 2 or 5 times a power of ten. */
  function niceScale(max) {
    if (!(max > 0)) return { top: 1, step: 0.5 };
    const raw = max / 4;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
    return { top: Math.ceil(max / step - 1e-9) * step, step };
  }

  function renderCharts(now) {
    // The time axis grows with the history the page has, up to 5 minutes, so a freshly opened
    // page shows its first minute across the chart rather than squeezed against the right edge.
    let oldest = now;
    for (const entry of series.values()) {
      for (const point of entry.ring) {
        if (point.t >= now - WINDOW_MS) {
          oldest = Math.min(oldest, point.t);
          break;
        }
      }
    }
    const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - oldest));
    const lines = (field, extra) =>
      [...series.values()].map((entry) => ({ color: entry.color, field, extra, ring: entry.ring }));
    drawChart($("chart-rps"), lines("rps"), now, span);
    drawChart($("chart-eps"), lines("eps"), now, span);
    drawChart($("chart-latency"), [...lines("p50"), ...lines("p99", "p99")], now, span);
  }

  function drawChart(node, lines, now, span) {
    const from = now - span;
    let max = 0;
    for (const line of lines) {
      for (const point of line.ring) {
        const value = point[line.field];
        if (point.t >= from && value !== null && value > max) max = value;
      }
    }
    const { top, step: yStep } = niceScale(max);
    const W = Math.max(240, Math.round(node.getBoundingClientRect().width));
    node.setAttribute("viewBox", "0 0 " + W + " " + H);
    const x = (t) => LEFT + ((t - from) / span) * (W - LEFT - RIGHT);
    const y = (v) => TOP + (1 - v / top) * (H - TOP - BOTTOM);
    node.replaceChildren();
    for (let i = 0; i * yStep <= top + 1e-9; i++) {
      const value = i * yStep;
      node.append(svg("line", { class: "grid", x1: LEFT, x2: W - RIGHT, y1: y(value), y2: y(value) }));
      node.append(svg("text", { class: "axis", x: LEFT - 6, y: y(value) + 3, "text-anchor": "end" },
        formatAxis(value)));
    }
    const step = TICK_STEPS_MS.find((ms) => span / ms <= 6) || 60000;
    for (let ago = 0; ago <= span; ago += step) {
      const label = ago === 0 ? "now" : ago < 60000 ? "-" + ago / 1000 + " s" : "-" + ago / 60000 + " min";
      const px = x(now - ago);
      const anchor = ago === 0 ? "end" : px - LEFT < 24 ? "start" : "middle";
      node.append(svg("text", { class: "axis", x: px, y: H - 6, "text-anchor": anchor }, label));
    }
    for (const line of lines) {
      const d = pathOf(line, from, x, y);
      if (d) {
        node.append(svg("path", { class: "series" + (line.extra ? " " + line.extra : ""),
          stroke: line.color, d }));
      }
    }
  }

  // A gap (a failed poll, a missing value) breaks the line instead of bridging it.
  function pathOf(line, from, x, y) {
    let d = "";
    let last = null;
    for (const point of line.ring) {
      const value = point[line.field];
      if (point.t < from || value === null) {
        last = null;
        continue;
      }
      const joined = last !== null && point.t - last < 3 * POLL_MS;
      d += (joined ? "L" : "M") + x(point.t).toFixed(1) + " " + y(value).toFixed(1);
      last = point.t;
    }
    return d;
  }

  function formatAxis(value) {
    if (value === 0) return "0";
    if (value >= 100) return String(Math.round(value));
    return String(Number(value.toPrecision(3)));
  }

  // ---- Messages, connection state, token -----------------------------------------------------

  function showMessage(kind, text) {
    const box = $("message");
    box.setAttribute("data-kind", kind);
    $("message-text").textContent = text;
    box.hidden = false;
  }

  function setConnection(state, detail) {
    const conn = $("conn");
    conn.setAttribute("data-state", state);
    conn.textContent = { live: "live", lost: "connection lost", auth: "token needed",
      connecting: "connecting" }[state];
    conn.setAttribute("title", detail || "");
    $("services").classList.toggle("stale", state === "lost");
  }

  function askForToken() {
    setConnection("auth");
    const form = $("token-form");
    $("token-note").textContent = sessionStorage.getItem(TOKEN_KEY)
      ? "The stored token was rejected."
      : "This balancer's admin API needs a token.";
    if (form.hidden) {
      form.hidden = false;
      $("token-input").focus();
    }
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token-input").value = "";
    poll();
  });
  $("message-close").addEventListener("click", () => {
    $("message").hidden = true;
  });

  // Charts are drawn at their on-screen size, so a resize redraws them.
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => renderCharts(Date.now()), 100);
  });

  setConnection("connecting");
  renderCharts(Date.now());
  poll();
})();
`;

const BODY = `
<header>
  <h1>Load balancer</h1>
  <span class="meta" id="summary"></span>
  <span class="meta">last update <b id="last-poll">never</b></span>
  <span id="conn" data-state="connecting">connecting</span>
</header>
<main>
  <div id="message" role="status" hidden><span id="message-text"></span><button type="button" id="message-close" aria-label="Dismiss">\u00d7</button></div>
  <form id="token-form" hidden>
    <label>Admin token <input id="token-input" type="password" autocomplete="off"></label>
    <button type="submit">Connect</button>
    <span id="token-note" class="meta"></span>
  </form>
  <div id="services"></div>
  <p id="empty" class="empty" hidden>No services.</p>
  <section>
    <h2>Routes <span class="meta">first match wins</span></h2>
    <div class="scroll"><table id="routes-table" hidden>
      <thead><tr><th class="num">#</th><th>Route</th><th>Match</th><th>Action</th></tr></thead>
      <tbody id="routes"></tbody>
    </table></div>
    <p id="no-routes" class="empty" hidden>No routes.</p>
  </section>
  <section>
    <h2>Last 5 minutes</h2>
    <ul id="legend"></ul>
    <div id="charts">
      <figure><figcaption>Requests per second</figcaption>
        <svg id="chart-rps" role="img" aria-label="Request rate per backend"></svg></figure>
      <figure><figcaption>Errors per second</figcaption>
        <svg id="chart-eps" role="img" aria-label="Error rate per backend"></svg></figure>
      <figure><figcaption>Latency (ms)<small>p50 solid, p99 dashed</small></figcaption>
        <svg id="chart-latency" role="img" aria-label="Latency p50 and p99 per backend"></svg></figure>
    </div>
  </section>
</main>
`;

async function sha256Base64(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return btoa(String.fromCharCode(...new Uint8Array(digest)));
}

/**
 * The page's Content-Security-Policy: only its own inline script and style (by hash), requests
 * only to its own origin. The page carries it in a `<meta>` tag; the admin listener may also send
 * it as a header (a header can add `frame-ancestors 'none'`, which `<meta>` cannot).
 */
export const DASHBOARD_CSP: string = [
  "default-src 'none'",
  `script-src 'sha256-${await sha256Base64(SCRIPT)}'`,
  `style-src 'sha256-${await sha256Base64(STYLE)}'`,
  "connect-src 'self'",
  "img-src data:",
  "base-uri 'none'",
  "form-action 'none'",
].join("; ");

/** The dashboard page served at `GET /` on the admin listener (UTF-8, self-contained). */
export const DASHBOARD_HTML: string = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="${DASHBOARD_CSP}">
<title>load balancer</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>${BODY}<script>${SCRIPT}</script>
</body>
</html>
`;
