// instrument dashboard: the route, request and error pages, by hash (#/routes/<route>?method=,
// #/requests/<id>, #/errors, #/errors/<group>). Same rules as app.js: every value reaches the
// page through textContent or an SVG attribute, never parsed as HTML.
"use strict";

(function () {
  const ui = window.instrumentUI;
  if (!ui) return;
  const { el, svg, clear, api, num, ms, pct, bytes, when } = ui;
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  function range() {
    const w = ui.window();
    return { from: w.from, to: w.to, step: w.step };
  }
  function section(title, ...children) {
    const card = el("section", { class: "card" });
    card.appendChild(el("h2", {}, title));
    for (const c of children) card.appendChild(c);
    return card;
  }
  function table(headers, rows, cells, empty) {
    const wrap = el("div", { class: "scroll" });
    const t = el("table");
    const head = el("tr");
    for (const h of headers) head.appendChild(el("th", {}, h));
    t.appendChild(el("thead")).appendChild(head);
    const body = t.appendChild(el("tbody"));
    for (const row of rows) {
      const tr = el("tr");
      for (const v of cells(row)) {
        const td = el("td");
        if (v instanceof Node) td.appendChild(v); else td.textContent = v === null || v === undefined ? "–" : String(v);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    if (!rows.length) {
      const tr = el("tr");
      tr.appendChild(el("td", { colspan: String(headers.length), class: "muted" }, empty || "Nothing in this range"));
      body.appendChild(tr);
    }
    wrap.appendChild(t);
    return wrap;
  }
  function fields(pairs) {
    const dl = el("dl", { class: "fields" });
    for (const [k, v] of pairs) {
      dl.appendChild(el("dt", {}, k));
      const dd = el("dd");
      if (v instanceof Node) dd.appendChild(v); else dd.textContent = v === null || v === undefined || v === "" ? "–" : String(v);
      dl.appendChild(dd);
    }
    return dl;
  }
  const requestLink = (id) => id ? el("a", { href: "#/requests/" + enc(id), class: "request-link" }, id) : "–";
  const groupLink = (id, text) => el("a", { href: "#/errors/" + enc(id), class: "group-link" }, text || id);

  // -- charts --------------------------------------------------------------------------
  function bars(data) {
    const box = el("div", { class: "chart histogram" });
    if (!data.length) { box.appendChild(el("p", { class: "muted" }, "No requests in this range")); return box; }
    const max = Math.max(...data.map((b) => b.count));
    const w = 1000 / data.length;
    const chart = svg("svg", { viewBox: "0 0 1000 180", preserveAspectRatio: "none", role: "img", "aria-label": "Latency histogram" });
    data.forEach((b, i) => {
      const h = (b.count / max) * 150;
      const rect = svg("rect", { x: i * w + 1, y: 160 - h, width: Math.max(1, w - 2), height: h, class: "bar" });
      rect.appendChild(svg("title", {}, "≤ " + ms(b.le_ms) + ": " + num(b.count)));
      chart.appendChild(rect);
      chart.appendChild(svg("text", { x: i * w + w / 2, y: 176, "text-anchor": "middle", class: "axis" }, ms(b.le_ms)));
    });
    box.appendChild(chart);
    return box;
  }
  function sparkline(values) {
    const max = Math.max(1, ...values);
    const n = Math.max(1, values.length - 1);
    const points = values.map((v, i) => (i / n) * 100 + "," + (20 - (v / max) * 18)).join(" ");
    const s = svg("svg", { viewBox: "0 0 100 20", preserveAspectRatio: "none", class: "spark", role: "img", "aria-label": "occurrences over time" });
    s.appendChild(svg("polyline", { points: points, fill: "none" }));
    return s;
  }
  // Collapsed stacks ("a:f;b:g" -> samples) as an icicle: the outermost frame on top.
  function flame(stacks) {
    const rootNode = { name: "all", value: 0, children: new Map() };
    for (const { stack, samples } of stacks) {
      rootNode.value += samples;
      let node = rootNode;
      for (const frame of stack.split(";")) {
        let child = node.children.get(frame);
        if (!child) { child = { name: frame, value: 0, children: new Map() }; node.children.set(frame, child); }
        child.value += samples;
        node = child;
      }
    }
    const rows = [];
    (function walk(node, depth, x) {
      rows.push([node, depth, x]);
      let at = x;
      for (const child of [...node.children.values()].sort((a, b) => b.value - a.value)) {
        walk(child, depth + 1, at);
        at += child.value;
      }
    })(rootNode, 0, 0);
    const depth = Math.max(...rows.map((r) => r[1])) + 1;
    const box = el("div", { class: "flame" });
    const chart = svg("svg", { viewBox: `0 0 1000 ${depth * 18}`, role: "img", "aria-label": "Flame graph" });
    const total = rootNode.value || 1;
    for (const [node, d, x] of rows) {
      const w = (node.value / total) * 1000;
      if (w < 0.5) continue;
      const g = svg("g", { class: "frame" });
      g.appendChild(svg("rect", { x: (x / total) * 1000, y: d * 18, width: w, height: 17 }));
      g.appendChild(svg("title", {}, node.name + " — " + num(node.value) + " samples (" + pct((100 * node.value) / total) + ")"));
      if (w > 40) {
        const label = node.name.length * 6 > w ? node.name.slice(0, Math.floor(w / 6) - 1) + "…" : node.name;
        g.appendChild(svg("text", { x: (x / total) * 1000 + 3, y: d * 18 + 13 }, label));
      }
      chart.appendChild(g);
    }
    box.appendChild(chart);
    return box;
  }

  // -- the pages -----------------------------------------------------------------------
  async function routePage(page, route, method) {
    const r = range();
    const params = Object.assign({ from: r.from, to: r.to }, method ? { method: method } : {});
    const data = await api("routes/" + enc(route), params);
    method = data.method;
    page.appendChild(el("h2", { class: "page-title" }, method + " " + data.route));
    const kpis = el("section", { class: "kpis" });
    const s = data.stats || {};
    for (const [label, value] of [["Requests", num(s.requests)], ["Per minute", num(s.rate_per_minute)],
      ["Error rate", pct(s.error_rate_percent)], ["p50", ms(s.p50_ms)], ["p95", ms(s.p95_ms)], ["p99", ms(s.p99_ms)]]) {
      const k = el("div", { class: "kpi" });
      k.appendChild(el("span", { class: "label" }, label));
      k.appendChild(el("span", { class: "value" }, value));
      kpis.appendChild(k);
    }
    page.appendChild(kpis);
    const series = await api("metrics/timeseries", { metric: "rate,error_rate", route: data.route, method: method, from: r.from, to: r.to, step: r.step });
    const rate = el("div", { class: "chart" });
    const errors = el("div", { class: "chart" });
    const grid = el("section", { class: "grid" });
    grid.appendChild(section("Requests per second", rate));
    grid.appendChild(section("Error rate (%)", errors));
    grid.appendChild(section("Latency histogram", bars(data.histogram || [])));
    const mix = el("div", { class: "mix" });
    grid.appendChild(section("Status codes", mix));
    page.appendChild(grid);
    ui.lineChart(rate, series.timestamps, [{ name: "requests/s", values: series.series.rate }], num);
    ui.lineChart(errors, series.timestamps, [{ name: "error %", values: series.series.error_rate }], (v) => num(v, 1));
    ui.statusMix(mix, data.status_codes);
    const exemplar = (e) => [when(e.timestamp), e.status_code, ms(e.duration_ms), e.path + (e.query ? "?" + e.query : ""), e.exception, requestLink(e.request_id)];
    const heads = ["Time", "Status", "Duration", "Path", "Exception", "Request"];
    page.appendChild(section("Slowest requests", table(heads, data.slowest || [], exemplar, "No exemplar kept in this range")));
    page.appendChild(section("Failing requests", table(heads, data.failing || [], exemplar, "No failing request in this range")));
    page.appendChild(section("Error groups", table(["Type", "Message", "Count", "Last seen"], data.error_groups || [],
      (g) => [groupLink(g.group_id, g.type), g.message, num(g.count), when(g.last_seen)], "No error in this range")));
    if ((data.profile || {}).available) {
      const prof = await api("profile", { route: data.route, method: method, from: r.from, to: r.to, format: "json" });
      page.appendChild(section("Where the time goes (" + num(prof.total) + " samples)", flame(prof.stacks || [])));
    } else {
      page.appendChild(section("Where the time goes", el("p", { class: "muted" }, "No profiler samples in this range (INSTRUMENT_PROFILER=true turns it on).")));
    }
  }

  async function requestPage(page, id) {
    let data;
    try { data = await api("requests/" + enc(id)); } catch (err) {
      page.appendChild(el("h2", { class: "page-title" }, "Request " + id));
      page.appendChild(el("p", { class: "muted" }, "This request was not kept: only the slowest and failing requests of each route and minute, and requests that logged, are."));
      return;
    }
    const r = data.request || {};
    page.appendChild(el("h2", { class: "page-title" }, (r.method || "") + " " + (r.path || id)));
    const route = r.route ? ui.routeLink(r.route, r.method) : null;
    const group = data.error_group ? groupLink(data.error_group.group_id, data.error_group.type + ": " + (data.error_group.message || "")) : null;
    page.appendChild(section("Request", fields([
      ["Request id", data.request_id], ["Time", when(r.timestamp)], ["Route", route], ["Method", r.method],
      ["Path", r.path], ["Query", r.query], ["Status", r.status_code], ["Duration", ms(r.duration_ms)],
      ["Time to first byte", ms(r.ttfb_ms)], ["Request bytes", bytes(r.request_bytes)], ["Response bytes", bytes(r.response_bytes)],
      ["Client", r.client], ["User agent", r.user_agent], ["Exception", r.exception], ["Error group", group],
      ["Trace id", r.trace_id], ["Kept as", r.reason], ["Process", r.pid]])));
    page.appendChild(section("Log lines", table(["Time", "Level", "Logger", "Message"], data.logs || [],
      (l) => [when(l.timestamp), l.level, l.logger, l.message + (l.exception ? "\n" + l.exception : "")], "It logged nothing")));
  }

  async function errorsPage(page) {
    const r = range();
    const data = await api("errors", { from: r.from, to: r.to });
    page.appendChild(el("h2", { class: "page-title" }, "Errors"));
    const routes = (g) => {
      const box = el("span");
      for (const x of g.routes || []) {
        box.appendChild(x.kind === "http" ? ui.routeLink(x.route, x.method) : el("span", {}, x.kind + " " + x.route));
        box.appendChild(document.createTextNode(" "));
      }
      return box;
    };
    page.appendChild(section("Error groups", table(["Type", "Message", "Count", "First seen", "Last seen", "Routes", "Over time"],
      data.groups || [], (g) => [groupLink(g.group_id, g.type), g.message, num(g.count), when(g.first_seen), when(g.last_seen), routes(g), sparkline(g.sparkline || [])],
      "No unhandled exception in this range")));
  }

  async function errorPage(page, id) {
    const r = range();
    const g = (await api("errors/" + enc(id), { from: r.from, to: r.to })).group;
    page.appendChild(el("h2", { class: "page-title" }, g.type + ": " + (g.message || "")));
    page.appendChild(section("Group", fields([["Where", g.culprit], ["In this range", num(g.count)], ["Ever", num(g.total)],
      ["First seen", when(g.first_seen)], ["Last seen", when(g.last_seen)]])));
    const tb = g.traceback || { frames: [] };
    const list = el("ol", { class: "traceback" });
    for (const f of tb.frames || []) {
      const li = el("li", { class: f.in_app ? "in-app" : "library" });
      li.appendChild(el("span", { class: "where" }, f.file + ":" + f.line + " in " + f.function));
      if (f.code) li.appendChild(el("code", {}, f.code));
      list.appendChild(li);
    }
    page.appendChild(section("Latest traceback (" + (tb.type || g.type) + ")", list));
    page.appendChild(section("Routes", table(["Kind", "Route", "Method", "Count"], g.routes || [],
      (x) => [x.kind, x.kind === "http" ? ui.routeLink(x.route, x.method) : x.route, x.method, num(x.count)])));
    page.appendChild(section("Recent occurrences", table(["Time", "Route", "Status", "Request", "Trace"], g.occurrences || [],
      (o) => [when(o.timestamp), o.route, o.status_code || "–", requestLink(o.request_id), o.trace_id])));
  }

  // -- routing -------------------------------------------------------------------------
  let shown = null;
  async function show() {
    const hash = location.hash;
    const page = $("page");
    const overview = $("overview");
    if (!hash.startsWith("#/")) {
      page.hidden = true;
      overview.hidden = false;
      shown = null;
      return;
    }
    const [path, query] = hash.slice(2).split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/");
    const key = hash + "|" + ui.window().from;
    shown = key;
    const fresh = el("div");
    try {
      if (parts[0] === "routes" && parts[1] !== undefined) await routePage(fresh, decodeURIComponent(parts.slice(1).join("/")), params.get("method"));
      else if (parts[0] === "requests" && parts[1]) await requestPage(fresh, decodeURIComponent(parts.slice(1).join("/")));
      else if (parts[0] === "errors" && parts[1]) await errorPage(fresh, decodeURIComponent(parts[1]));
      else if (parts[0] === "errors") await errorsPage(fresh);
      else fresh.appendChild(el("p", { class: "muted" }, "No such page."));
      ui.showError("");
    } catch (err) {
      if (String(err.message) === "signed out") return;
      fresh.appendChild(el("p", { class: "banner" }, "Could not load: " + (err.message || err)));
    }
    if (shown !== key) return;  // another page was asked for meanwhile
    clear(page);
    page.appendChild(fresh);
    overview.hidden = true;
    page.hidden = false;
    window.scrollTo(0, 0);
  }
  window.addEventListener("hashchange", show);
  $("range").addEventListener("change", () => { if (location.hash.startsWith("#/")) show(); });
  $("reload").addEventListener("click", () => { if (location.hash.startsWith("#/")) show(); });
  show();
})();
