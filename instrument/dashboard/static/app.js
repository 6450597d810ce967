// instrument dashboard. No dependencies, no inline code, no HTML parsing of data: every value from the
// API reaches the page through textContent or an SVG attribute, so a route named <script>
// is shown as text. Charts are SVG drawn here. This file draws the overview and routes between
// views by the hash, so links can be shared: "" (or "#range=1h") is the overview;
// "#/routes/<route>?method=GET", "#/requests/<id>", "#/errors" and "#/errors/<group>" are the
// pages pages.js draws (segments encodeURIComponent'ed; "range=" in a page's query names its
// range). pages.js uses the helpers exposed below as window.instrumentUI.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const root = document.body.dataset.root || "";
  const API = root + "/api/v1/monitoring/";
  // Range -> seconds, step (seconds per point) and the name of such a period ("vs previous
  // hour"). Whole-hour steps read the hourly tier.
  const RANGES = {
    "15m": [900, 60, "15 minutes"], "1h": [3600, 60, "hour"], "6h": [21600, 600, "6 hours"],
    "24h": [86400, 3600, "day"], "7d": [604800, 3600, "week"],
  };
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let busy = false;
  let last = {};
  let generation = 0;  // one per refresh: the answers of an older one (another view) are dropped

  // -- helpers ----------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)instrument_csrf=([^;]+)/);
    return m ? m[1] : "";
  }
  function num(v, digits) {
    if (v === null || v === undefined) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(digits === undefined ? (a >= 100 ? 0 : a >= 10 ? 1 : 2) : digits);
  }
  function ms(v) {
    if (v === null || v === undefined) return "–";
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 2) + " s";
    return num(v) + " ms";
  }
  function pct(v) { return v === null || v === undefined ? "–" : num(v, v < 10 ? 2 : 1) + "%"; }
  // A relative change from the API (a fraction: 0.18 is 18 % more) as "+18 % vs previous hour";
  // null: nothing to compare with ("no previous data" when the previous period had no requests).
  function change(f, hasPrevious, period) {
    if (f === null || f === undefined) return hasPrevious ? "" : "no previous data";
    const a = Math.abs(f * 100);
    const shown = a < 0.05 ? "0" : num(a, a >= 10 ? 0 : 1);
    const sign = shown === "0" ? "±" : f > 0 ? "+" : "-";
    return sign + shown + " % vs previous " + period;
  }
  function bytes(v) {
    if (v === null || v === undefined) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i ? v.toFixed(1) : String(Math.round(v))) + " " + units[i];
  }
  function when(value) {
    if (!value) return "–";
    const d = typeof value === "number" ? new Date(value * 1000)
      : new Date(/[zZ]|[+-]\d\d:\d\d$/.test(value) ? value : value + "Z");
    return isNaN(d) ? String(value) : d.toLocaleString();
  }
  function showError(message) {
    const box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  async function api(path, params, options) {
    const url = API + path + (params ? "?" + new URLSearchParams(params) : "");
    const response = await fetch(url, Object.assign({
      credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store",
    }, options || {}));
    if (response.status === 401) {
      window.location.assign(root + "/monitoring/login");
      throw new Error("signed out");
    }
    const body = await response.json().catch(() => ({}));
    if (!response.ok && !(path === "health" && response.status === 503)) {
      const err = new Error(path + ": " + (body.message || response.status));
      err.status = response.status;
      err.detail = body.message || "";
      throw err;
    }
    return body;
  }

  // -- charts -----------------------------------------------------------------------
  function nice(max) {
    if (!(max > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= max) return m * p;
    return 10 * p;
  }
  function timeLabel(t, span) {
    const d = new Date(t * 1000);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return span > 2 * 86400 ? d.toLocaleDateString([], { weekday: "short" }) + " " + hm : hm;
  }

  // series: [{name, values}], values aligned with timestamps; null leaves a gap.
  function lineChart(container, timestamps, series, format) {
    clear(container);
    const width = Math.max(260, container.clientWidth || 600);
    const height = container.clientWidth < 500 ? 160 : 180;
    const pad = { l: 48, r: 10, t: 8, b: 22 };
    const w = width - pad.l - pad.r;
    const h = height - pad.t - pad.b;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    let max = 0;
    let points = 0;
    for (const s of series) {
      for (const v of s.values) if (v !== null && v !== undefined) { points += 1; max = Math.max(max, v); }
    }
    chart.setAttribute("data-points", String(points));
    chart.setAttribute("aria-label", series.map((s) => s.name).join(", "));
    container.appendChild(chart);
    if (!timestamps.length || !points) {
      chart.appendChild(svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" },
        "No data in this range"));
      return;
    }
    const top = nice(max);
    const t0 = timestamps[0];
    const t1 = timestamps[timestamps.length - 1];
    const span = Math.max(1, t1 - t0);
    const x = (t) => pad.l + ((t - t0) / span) * w;
    const y = (v) => pad.t + h - (v / top) * h;
    const axis = svg("g", { class: "axis" });
    for (let i = 0; i <= 4; i += 1) {
      const v = (top * i) / 4;
      axis.appendChild(svg("line", { x1: pad.l, x2: pad.l + w, y1: y(v), y2: y(v), class: "gridline" }));
      axis.appendChild(svg("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
    }
    const ticks = Math.max(2, Math.min(6, Math.floor(w / 110)));
    for (let i = 0; i <= ticks; i += 1) {
      const t = t0 + (span * i) / ticks;
      axis.appendChild(svg("text", { x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" },
        timeLabel(t, span)));
    }
    chart.appendChild(axis);
    series.forEach((s, k) => {
      let d = "";
      let pen = false;
      const dots = svg("g", { class: "s" + k });
      s.values.forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        const px = x(timestamps[i]).toFixed(1);
        const py = y(v).toFixed(1);
        d += (pen ? "L" : "M") + px + " " + py + " ";
        pen = true;
        dots.appendChild(svg("circle", { cx: px, cy: py, r: 1.8, class: "pt s" + k }));
      });
      chart.appendChild(svg("path", { d: d.trim(), class: "series s" + k, "data-name": s.name }));
      chart.appendChild(dots);
    });
    hover(chart, timestamps, series, format, x, pad, h, width);
    if (series.length > 1) {
      const legend = el("div", { class: "legend" });
      series.forEach((s, k) => {
        const item = el("span");
        const swatch = svg("svg", { viewBox: "0 0 10 10" });
        swatch.appendChild(svg("rect", { width: 10, height: 10, rx: 2, class: "s" + k }));
        item.appendChild(swatch);
        item.appendChild(document.createTextNode(s.name));
        legend.appendChild(item);
      });
      container.appendChild(legend);
    }
  }

  function hover(chart, timestamps, series, format, x, pad, h, width) {
    const g = svg("g", { class: "hover", visibility: "hidden" });
    const line = svg("line", { y1: pad.t, y2: pad.t + h });
    const box = svg("rect", { rx: 4, height: 16 + 14 * series.length, width: 150 });
    const texts = [svg("text", {})].concat(series.map(() => svg("text", {})));
    g.appendChild(line);
    g.appendChild(box);
    texts.forEach((t) => g.appendChild(t));
    chart.appendChild(g);
    chart.addEventListener("pointermove", (event) => {
      const rect = chart.getBoundingClientRect();
      const px = ((event.clientX - rect.left) / rect.width) * width;
      let best = 0;
      timestamps.forEach((t, i) => { if (Math.abs(x(t) - px) < Math.abs(x(timestamps[best]) - px)) best = i; });
      const cx = x(timestamps[best]);
      line.setAttribute("x1", cx);
      line.setAttribute("x2", cx);
      const bx = cx + 160 > width ? cx - 158 : cx + 8;
      box.setAttribute("x", bx);
      box.setAttribute("y", pad.t);
      texts[0].textContent = new Date(timestamps[best] * 1000).toLocaleString();
      series.forEach((s, k) => {
        const v = s.values[best];
        texts[k + 1].textContent = s.name + ": " + (v === null || v === undefined ? "–" : format(v));
      });
      texts.forEach((t, i) => { t.setAttribute("x", bx + 6); t.setAttribute("y", pad.t + 13 + 14 * i); });
      g.setAttribute("visibility", "visible");
    });
    chart.addEventListener("pointerleave", () => g.setAttribute("visibility", "hidden"));
  }

  function statusMix(container, codes) {
    clear(container);
    const classes = {};
    let total = 0;
    for (const [code, n] of Object.entries(codes || {})) {
      const c = /^[2-5]\d\d$/.test(code) ? code[0] : "x";
      classes[c] = (classes[c] || 0) + n;
      total += n;
    }
    const bar = svg("svg", { viewBox: "0 0 1000 24", preserveAspectRatio: "none", role: "img", "aria-label": "Status code mix" });
    let at = 0;
    for (const c of ["2", "3", "4", "5", "x"]) {
      if (!classes[c]) continue;
      const wdt = (classes[c] / total) * 1000;
      bar.appendChild(svg("rect", { x: at, y: 0, width: wdt, height: 24, class: "c" + c }));
      at += wdt;
    }
    if (!total) bar.appendChild(svg("rect", { width: 1000, height: 24, class: "cx" }));
    container.appendChild(bar);
    const list = el("ul");
    const sorted = Object.entries(codes || {}).sort((a, b) => b[1] - a[1]);
    for (const [code, n] of sorted.slice(0, 12)) {
      list.appendChild(el("li", { class: "muted" }, code + ": " + num(n) + " (" + pct((100 * n) / total) + ")"));
    }
    if (!sorted.length) list.appendChild(el("li", { class: "muted" }, "No requests in this range"));
    container.appendChild(list);
  }

  // -- links to the pages (pages.js) -------------------------------------------------
  const href = {
    route(route, method, kind) {
      const q = new URLSearchParams();
      if (method) q.set("method", method);
      if (kind && kind !== "http") q.set("kind", kind);
      const qs = q.toString();
      return "#/routes/" + encodeURIComponent(route) + (qs ? "?" + qs : "");
    },
    request(id) { return "#/requests/" + encodeURIComponent(id); },
    group(id) { return "#/errors/" + encodeURIComponent(id); },
  };
  function routeLink(route, method, kind) {
    return el("a", { href: href.route(route, method, kind), class: "route-link" }, route);
  }
  // The view the hash names: null for the overview, else {path: [segments], params}.
  function parseHash() {
    const h = location.hash;
    if (!h.startsWith("#/") || h.length === 2) return null;
    const raw = h.slice(2);
    const at = raw.indexOf("?");
    const decode = (part) => { try { return decodeURIComponent(part); } catch (e) { return part; } };
    return {
      path: (at < 0 ? raw : raw.slice(0, at)).split("/").map(decode),
      params: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1)),
    };
  }
  function hashOf(view) {
    const qs = view.params.toString();
    return "#/" + view.path.map(encodeURIComponent).join("/") + (qs ? "?" + qs : "");
  }
  // The range a hash names ("#range=1h" on the overview, "?range=1h" on a page), if any.
  function hashRange() {
    const view = parseHash();
    const value = view ? view.params.get("range") : new URLSearchParams(location.hash.slice(1)).get("range");
    return value && RANGES[value] ? value : null;
  }

  // -- tables -----------------------------------------------------------------------
  function fillTable(id, rows, cells) {
    const body = $(id).tBodies[0];
    clear(body);
    for (const row of rows) {
      const tr = el("tr");
      for (const [value, cls] of cells(row)) {
        if (value instanceof Node) { const td = el("td", cls ? { class: cls } : {}); td.appendChild(value); tr.appendChild(td); }
        else tr.appendChild(el("td", cls ? { class: cls } : {}, value));
      }
      body.appendChild(tr);
    }
    if (!rows.length) {
      const tr = el("tr");
      tr.appendChild(el("td", { colspan: String($(id).tHead.rows[0].cells.length), class: "muted" }, "Nothing in this range"));
      body.appendChild(tr);
    }
  }

  function renderAlerts(data) {
    const active = data.active || [];
    $("alerts-empty").hidden = active.length > 0;
    $("alerts-active").hidden = active.length === 0;
    fillTable("alerts-active", active, (a) => {
      const acked = Boolean(a.acknowledged_at);
      let action = "";
      if (!acked) {
        action = el("button", { type: "button", class: "ack", "data-alert-id": a.id }, "Acknowledge");
        action.addEventListener("click", () => acknowledge(a.id, action));
      }
      return [
        [el("span", { class: "sev sev-" + String(a.severity).toLowerCase() }, a.severity)],
        [a.name], [causeOf(a) || a.description || ""], [when(a.created_at)],
        [acked ? "acknowledged" + (a.acknowledged_by ? " by " + a.acknowledged_by : "") : "firing",
          acked ? "state state-acknowledged" : "state"],
        [action],
      ];
    });
    fillTable("alerts-history", data.history || [], (a) => [
      [when(a.updated_at)], [a.name], [a.severity], [a.status],
      [a.acknowledged_at ? when(a.acknowledged_at) + (a.acknowledged_by ? " (" + a.acknowledged_by + ")" : "") : "–"],
    ]);
  }

  // An alert on errors or latency points at its route and error group (metadata.cause).
  function causeOf(a) {
    const cause = (a.metadata || {}).cause;
    if (!cause) return null;
    const box = el("span", {}, (a.description || "") + " ");
    if (cause.route) box.appendChild(el("a", { href: cause.route.link, class: "cause" }, cause.route.method + " " + cause.route.route));
    if (cause.error_group) {
      box.appendChild(document.createTextNode(" "));
      box.appendChild(el("a", { href: cause.error_group.link, class: "cause" }, cause.error_group.type || "error group"));
    }
    return box;
  }

  async function acknowledge(id, button) {
    button.disabled = true;
    try {
      await api("alerts/" + encodeURIComponent(id) + "/acknowledge", null, {
        method: "POST",
        headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRF-Token": csrf() },
        body: JSON.stringify({ by: "dashboard" }),
      });
      renderAlerts(await api("alerts", { limit: 20 }));
    } catch (err) {
      button.disabled = false;
      showError(String(err.message || err));
    }
  }

  function renderHealth(h) {
    const badge = $("health");
    badge.dataset.status = h.status || "error";
    badge.textContent = "health: " + (h.status || "unknown");
    const list = $("health-reasons");
    clear(list);
    for (const reason of h.reasons || []) list.appendChild(el("li", {}, reason));
    const kit = (h.checks || {}).kit;
    if (kit) {
      list.appendChild(el("li", { class: "muted" },
        `flusher ${kit.alive ? "running" : "stopped"}, ${num(kit.buffered)} buffered, ` +
        `${num(kit.dropped)} dropped, ${num(kit.samples_flushed || 0)} stored`));
    }
    const store = (h.checks || {}).store || {};
    list.appendChild(el("li", { class: "muted" }, "last request minute: " + when(store.last_request_minute)));
    list.appendChild(el("li", { class: "muted" }, "last system reading: " + when(store.last_system_reading)));
    if (!(h.reasons || []).length) list.insertBefore(el("li", {}, "All good."), list.firstChild);
  }

  function renderSummary(s, period) {
    const r = s.requests || {};
    const fmt = {
      requests: num, rate_per_minute: num, error_rate_percent: pct, client_error_rate_percent: pct,
      p50_ms: ms, p95_ms: ms, p99_ms: ms, bytes_out: bytes,
    };
    for (const node of document.querySelectorAll("[data-kpi]")) {
      const key = node.dataset.kpi;
      node.textContent = (fmt[key] || num)(r[key]);
    }
    const before = (s.previous || {}).requests || {};
    const deltas = s.change || {};
    for (const node of document.querySelectorAll("[data-delta]")) {
      const key = node.dataset.delta;
      node.textContent = change(deltas[key], Boolean(before.requests), period);
      node.setAttribute("title", "previous " + period + ": " + (fmt[key] || num)(before[key]));
    }
    statusMix($("status-mix"), r.status_codes);
    fillTable("routes-slow", s.slowest_routes || [], (e) => [
      [routeLink(e.route, e.method), "route"], [e.method], [num(e.requests), "num"], [ms(e.p95_ms), "num"],
      [ms(e.p99_ms), "num"], [ms(e.avg_ms), "num"],
    ]);
    fillTable("routes-failing", s.failing_routes || [], (e) => [
      [routeLink(e.route, e.method), "route"], [e.method], [num(e.requests), "num"], [num(e.errors), "num"],
      [pct(e.error_rate_percent), "num"],
    ]);
  }

  // Celery tasks (kind "task": the outcome is the method), with each task's queue wait
  // (kind "task_wait", one row per task); the card shows only where tasks ran.
  function renderTasks(rows, waits) {
    $("tasks").hidden = rows.length === 0;
    const wait = new Map(waits.map((x) => [x.route, x.p95_ms]));
    fillTable("tasks-table", rows, (e) => [
      [routeLink(e.route, e.method, "task"), "route"], [e.method], [num(e.requests), "num"],
      [ms(e.p95_ms), "num"], [ms(e.avg_ms), "num"], [wait.has(e.route) ? ms(wait.get(e.route)) : "–", "num"],
    ]);
  }

  function renderCharts() {
    const ts = last.series;
    if (ts) {
      const t = ts.timestamps;
      lineChart($("chart-rate"), t, [{ name: "requests/s", values: ts.series.rate }], num);
      lineChart($("chart-errors"), t, [{ name: "error %", values: ts.series.error_rate }], (v) => num(v, 1));
      lineChart($("chart-latency"), t, [
        { name: "p50", values: ts.series.latency_p50 },
        { name: "p95", values: ts.series.latency_p95 },
        { name: "p99", values: ts.series.latency_p99 },
      ], num);
    }
    const sys = last.system;
    if (sys) {
      const t = sys.timestamps;
      const s = sys.series;
      lineChart($("chart-cpu"), t, [{ name: "cpu", values: s.cpu_percent || [] }], num);
      lineChart($("chart-memory"), t, [{ name: "memory", values: s.memory_percent || [] }], num);
      lineChart($("chart-disk"), t, [{ name: "disk", values: s.disk_usage_percent || [] }], num);
      lineChart($("chart-network"), t, [
        { name: "sent", values: s.network_sent_per_s || [] },
        { name: "received", values: s.network_recv_per_s || [] },
      ], (v) => bytes(v).replace(" ", ""));
    }
  }

  // -- logs -------------------------------------------------------------------------
  async function searchLogs(extra) {
    const form = $("logs-form");
    const params = { limit: 100 };
    for (const name of ["q", "level", "request_id"]) {
      const value = form.elements[name].value.trim();
      if (value) params[name] = value;
    }
    Object.assign(params, extra || {});
    const data = await api("logs", params);
    $("logs").hidden = !data.available;
    fillTable("logs-table", data.logs || [], (line) => {
      const rid = line.request_id ? el("a", { href: "#", "data-request": line.request_id }, line.request_id) : "";
      if (rid) rid.addEventListener("click", (e) => { e.preventDefault(); form.elements.request_id.value = line.request_id; searchLogs().catch((err) => showError(err.message)); });
      return [[when(line.timestamp)], [line.level, "lvl-" + line.level], [line.logger],
        [line.message + (line.exception ? "\n" + line.exception : "")], [rid]];
    });
  }

  // -- refresh ----------------------------------------------------------------------
  function window_() {
    const [span, step, period] = RANGES[$("range").value] || RANGES["1h"];
    const to = Math.floor(Date.now() / 1000);
    return { hours: span / 3600, from: to - span, to: to, step: step, period: period };
  }

  async function refreshOverview(current) {
    const w = window_();
    const range = { from: w.from, to: w.to, step: w.step };
    const [summary, series, system, alerts, health, tasks, waits] = await Promise.all([
      api("metrics/summary", { hours: w.hours }),
      api("metrics/timeseries", Object.assign({ metric: "rate,error_rate,latency_p50,latency_p95,latency_p99" }, range)),
      api("metrics/system", range),
      api("alerts", { limit: 20 }),
      api("health"),
      api("routes", { kind: "task", from: w.from, to: w.to, limit: 50 }),
      api("routes", { kind: "task_wait", from: w.from, to: w.to, limit: 200 }),
    ]);
    if (!current()) return;
    last = { series: series, system: system };
    renderSummary(summary, w.period);
    renderTasks(tasks.routes || [], waits.routes || []);
    renderCharts();
    renderAlerts(alerts);
    renderHealth(health);
    await searchLogs();
  }

  // A page of pages.js: it fetches, builds the page off-screen, then mounts it (mount says
  // false when the view changed meanwhile) and draws what needs the page's width.
  async function refreshPage(view, current) {
    const box = $("page");
    const pages = window.instrumentUI.pages;
    if (!pages) {
      clear(box);
      box.appendChild(el("p", { class: "banner" }, "This page could not be loaded (pages.js is missing)."));
      return;
    }
    const health = api("health").then((h) => { if (current()) renderHealth(h); }, () => {});  // the header's badge
    await pages.render(view, window_(), (node) => {
      if (!current()) return false;
      clear(box);
      box.appendChild(node);
      return true;
    });
    await health;
  }

  // Shows the view the hash names, marks its tab in the header, and loads its data.
  async function refresh() {
    const mine = ++generation;
    const current = () => mine === generation;
    const view = parseHash();
    const onPage = Boolean(view);
    $("overview").hidden = onPage;
    $("page").hidden = !onPage;
    const tab = !onPage ? "nav-overview" : view.path[0] === "errors" && view.path.length === 1 ? "nav-errors" : "";
    for (const a of document.querySelectorAll(".views a")) {
      if (a.id === tab) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    if (!onPage) document.title = "instrument · monitoring";
    busy = true;
    try {
      if (onPage) await refreshPage(view, current);
      else await refreshOverview(current);
      if (!current()) return;
      showError("");
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      if (current() && String(err.message) !== "signed out") showError("Could not load: " + (err.message || err));
    } finally {
      if (current()) busy = false;
    }
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = null;
    const seconds = Number($("refresh").value);
    if (seconds > 0) timer = setInterval(() => { if (!document.hidden && !busy) refresh(); }, seconds * 1000);
    localStorage.setItem("instrument.refresh", $("refresh").value);
  }

  function init() {
    const saved = hashRange() || localStorage.getItem("instrument.range");
    if (saved && RANGES[saved]) $("range").value = saved;
    const refreshSaved = localStorage.getItem("instrument.refresh");
    if (refreshSaved !== null && [...$("refresh").options].some((o) => o.value === refreshSaved)) $("refresh").value = refreshSaved;
    $("range").addEventListener("change", () => {
      localStorage.setItem("instrument.range", $("range").value);
      const view = parseHash();
      if (view) {  // a page keeps its range in its own query, so its link shows the same
        view.params.set("range", $("range").value);
        history.replaceState(null, "", hashOf(view));
      } else {
        history.replaceState(null, "", "#range=" + $("range").value);
      }
      refresh();
    });
    window.addEventListener("hashchange", () => {  // a link followed, or back / forward
      const named = hashRange();
      if (named) $("range").value = named;
      window.scrollTo(0, 0);
      refresh();
    });
    $("refresh").addEventListener("change", schedule);
    $("reload").addEventListener("click", refresh);
    $("logs-form").addEventListener("submit", (e) => { e.preventDefault(); searchLogs().catch((err) => showError(err.message)); });
    if (document.body.dataset.session === "cookie") {
      $("logout").hidden = false;
      $("logout").addEventListener("click", async () => {
        await fetch(root + "/monitoring/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf() } });
        location.assign(root + "/monitoring/login");
      });
    }
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (!parseHash()) renderCharts();
        else if (window.instrumentUI.pages) window.instrumentUI.pages.resize();
      }, 150);
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden && timer) refresh(); });
    schedule();
    refresh();
  }

  // What pages.js draws with: one copy of each helper. pages.js sets .pages to its views.
  window.instrumentUI = { el, svg, clear, api, num, ms, pct, bytes, when, nice, lineChart, statusMix,
    showError, routeLink, href, parseHash, hashOf, window: window_, RANGES, pages: null };
  // Deferred scripts all run, in order, before DOMContentLoaded (readyState is "interactive"
  // while they do), so at DOMContentLoaded pages.js has registered; "load" and "complete" cover
  // a copy of this file loaded later.
  let started = false;
  const start = () => { if (!started) { started = true; init(); } };
  document.addEventListener("DOMContentLoaded", start);
  window.addEventListener("load", start);
  if (document.readyState === "complete") start();
})();
