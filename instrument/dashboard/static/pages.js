// instrument dashboard: the route, request and error pages. app.js routes by the hash
// (#/routes/<route>?method=, #/requests/<id>, #/errors, #/errors/<group>) and calls
// instrumentUI.pages.render(view, range, mount) here. Same rules as app.js: every value reaches
// the page through textContent or an SVG attribute, never parsed as HTML; no inline style.
"use strict";

(function () {
  const ui = window.instrumentUI;
  if (!ui) return;
  const { el, svg, clear, api, num, ms, pct, bytes, when, href } = ui;
  const enc = encodeURIComponent;
  const DASH = "–";
  let drawers = [];  // what the page shown draws at its width: again on resize
  let zoomed = { key: null, path: [] };  // the flame graph frame zoomed into, kept across refreshes

  // -- building blocks -----------------------------------------------------------------
  function text(v) { return v === null || v === undefined || v === "" ? DASH : String(v); }
  function put(parent, v) {
    if (v instanceof Node) parent.appendChild(v); else parent.textContent = text(v);
    return parent;
  }
  function card(title, children, cls) {
    const box = el("section", { class: "card" + (cls ? " " + cls : "") });
    if (title) box.appendChild(el("h2", {}, title));
    for (const c of children) if (c) box.appendChild(c);
    return box;
  }
  function grid(children) {
    const box = el("div", { class: "grid" });
    for (const c of children) if (c) box.appendChild(c);
    return box;
  }
  // cells(row) -> [value | [value, class]]; a value may be a DOM node.
  function table(headers, rows, cells, empty) {
    const wrap = el("div", { class: "scroll" });
    const t = wrap.appendChild(el("table"));
    const head = t.appendChild(el("thead")).appendChild(el("tr"));
    for (const h of headers) {
      const [label, cls] = Array.isArray(h) ? h : [h, ""];
      head.appendChild(el("th", cls ? { class: cls } : {}, label));
    }
    const body = t.appendChild(el("tbody"));
    for (const row of rows) {
      const tr = body.appendChild(el("tr"));
      for (const cell of cells(row)) {
        const [v, cls] = Array.isArray(cell) ? cell : [cell, ""];
        tr.appendChild(put(el("td", cls ? { class: cls } : {}), v));
      }
    }
    if (!rows.length) {
      const tr = body.appendChild(el("tr"));
      tr.appendChild(el("td", { colspan: String(headers.length), class: "muted" }, empty || "Nothing in this range"));
    }
    return wrap;
  }
  function fields(pairs) {
    const dl = el("dl", { class: "fields" });
    for (const [k, v, cls] of pairs) {
      dl.appendChild(el("dt", {}, k));
      dl.appendChild(put(el("dd", cls ? { class: cls } : {}), v));
    }
    return dl;
  }
  function tiles(pairs, cls) {
    const box = el("section", { class: "kpis " + cls, "aria-label": "Totals for the range" });
    for (const [key, label, value] of pairs) {
      const k = box.appendChild(el("div", { class: "kpi" }));
      k.appendChild(el("span", { class: "label" }, label));
      k.appendChild(el("span", { class: "value", "data-stat": key }, value));
    }
    return box;
  }
  // The page's title block: where it sits (links back), its title, then any lines under it.
  function heading(crumbs, title, lines) {
    const box = el("header", { class: "page-head" });
    const nav = box.appendChild(el("nav", { class: "crumbs", "aria-label": "You are here" }));
    nav.appendChild(el("a", { href: "#" }, "Overview"));
    for (const [label, link] of crumbs) {
      nav.appendChild(document.createTextNode(" › "));
      nav.appendChild(link ? el("a", { href: link }, label) : el("span", {}, label));
    }
    box.appendChild(el("h2", { class: "page-title" }, title));
    for (const line of lines || []) if (line) box.appendChild(line);
    document.title = title + " · instrument";
    return box;
  }
  function page(children) {
    const box = el("div", { class: "page-body" });
    for (const c of children) if (c) box.appendChild(c);
    return box;
  }
  function note(message, cls) { return el("p", { class: cls || "muted" }, message); }
  function line(parts) {  // a line of text and links
    const p = el("p", { class: "page-sub" });
    for (const part of parts) {
      if (part === null || part === undefined) continue;
      p.appendChild(part instanceof Node ? part : document.createTextNode(String(part)));
    }
    return p;
  }
  function periodOf(w) {
    const found = Object.entries(ui.RANGES).find(([, v]) => v[0] === w.to - w.from);
    return found ? found[1][2] : "range";
  }

  // -- links -----------------------------------------------------------------------------
  const requestLink = (id, label, cls) => id
    ? el("a", { href: href.request(id), class: cls || "request-link" }, label === undefined ? id : label) : DASH;
  const groupLink = (id, label) => el("a", { href: href.group(id), class: "group-link" }, label || id);
  function routeOf(kind, route, method) {  // http routes have a page; other kinds show as text
    if (!route) return DASH;
    return ui.routeLink(route, method, kind);
  }

  // -- charts ----------------------------------------------------------------------------
  // Bars per doubling of latency; the doublings between the lowest and highest one that hold
  // nothing are drawn as empty slots, so a slow tail is seen as far from the bulk as it is.
  function histogram(box, bars) {
    clear(box);
    if (!bars.length) { box.appendChild(note("No requests in this range")); return; }
    let data = bars.map((b) => ({ le: b.le_ms, count: b.count }));
    const exp = (v) => Math.log2(v);
    if (data.every((b) => b.le > 0 && Math.abs(exp(b.le) - Math.round(exp(b.le))) < 1e-9)) {
      const by = new Map(data.map((b) => [Math.round(exp(b.le)), b.count]));
      const lo = Math.round(exp(data[0].le));
      const hi = Math.round(exp(data[data.length - 1].le));
      data = [];
      for (let e = lo; e <= hi && data.length < 64; e += 1) data.push({ le: Math.pow(2, e), count: by.get(e) || 0 });
    }
    const total = data.reduce((s, b) => s + b.count, 0) || 1;
    const width = Math.max(260, box.clientWidth || 600);
    const height = 180;
    const pad = { l: 44, r: 8, t: 8, b: 22 };
    const w = width - pad.l - pad.r;
    const h = height - pad.t - pad.b;
    const top = ui.nice(Math.max(...data.map((b) => b.count)));
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "Latency histogram: requests per duration" });
    const axis = chart.appendChild(svg("g", { class: "axis" }));
    for (let i = 0; i <= 2; i += 1) {
      const v = (top * i) / 2;
      const y = pad.t + h - (v / top) * h;
      axis.appendChild(svg("line", { x1: pad.l, x2: pad.l + w, y1: y, y2: y, class: "gridline" }));
      axis.appendChild(svg("text", { x: pad.l - 6, y: y + 4, "text-anchor": "end" }, num(v)));
    }
    const bw = w / data.length;
    const every = Math.max(1, Math.ceil(data.length / Math.max(1, Math.floor(w / 52))));
    data.forEach((b, i) => {
      const x = pad.l + i * bw;
      if (b.count) {
        const bh = Math.max(1, (b.count / top) * h);
        const rect = svg("rect", { x: x + 1, y: pad.t + h - bh, width: Math.max(1, bw - 2), height: bh, class: "bar",
          "data-le": b.le, "data-count": b.count });
        rect.appendChild(svg("title", {}, "≤ " + ms(b.le) + ": " + num(b.count) + " requests (" + pct((100 * b.count) / total) + ")"));
        chart.appendChild(rect);
      }
      if (i % every === 0) {
        axis.appendChild(svg("text", { x: x + bw / 2, y: height - 6, "text-anchor": "middle" }, ms(b.le)));
      }
    });
    box.appendChild(chart);
    box.appendChild(note("Requests per duration: each bar is a doubling, labelled with its upper bound."));
  }

  function sparkline(values, step) {
    const n = values.length;
    const max = Math.max(1, ...values);
    const total = values.reduce((s, v) => s + v, 0);
    const s = svg("svg", { viewBox: "0 0 100 20", preserveAspectRatio: "none", class: "spark", role: "img",
      "aria-label": num(total) + " in the range" });
    const points = values.map((v, i) => (n > 1 ? (i / (n - 1)) * 100 : 50).toFixed(1) + "," + (19 - (v / max) * 17).toFixed(1));
    if (n === 1) points.unshift("0," + points[0].split(",")[1]);
    s.appendChild(svg("polyline", { points: points.join(" ") }));
    s.appendChild(svg("title", {}, num(total) + " in the range" + (step ? ", " + num(step / 60) + " min a step" : "")));
    return s;
  }

  // Counts per minute ([{minute, count}]) summed into the range's steps, as a line chart.
  function perStep(box, perMinute, w) {
    const lo = Math.floor(w.from / w.step) * w.step;
    const hi = Math.ceil(w.to / w.step) * w.step;
    const t = [];
    for (let x = lo; x < hi; x += w.step) t.push(x);
    const values = t.map(() => 0);
    for (const p of perMinute || []) {
      const i = Math.floor((p.minute - lo) / w.step);
      if (i >= 0 && i < values.length) values[i] += p.count;
    }
    ui.lineChart(box, t, [{ name: "occurrences", values: values }], num);
  }

  // -- flame graph -------------------------------------------------------------------------
  // Collapsed stacks ("mod:fn;mod:fn2", outermost first) -> a tree of {name, value, children}.
  function stackTree(stacks) {
    const root = { name: "all", value: 0, children: new Map() };
    for (const { stack, samples } of stacks) {
      if (!(samples > 0)) continue;
      root.value += samples;
      let node = root;
      for (const frame of String(stack).split(";")) {
        let child = node.children.get(frame);
        if (!child) { child = { name: frame, value: 0, children: new Map() }; node.children.set(frame, child); }
        child.value += samples;
        node = child;
      }
    }
    return root;
  }
  function hue(name) {  // warm colours, one per module, stable across draws
    const module = name.split(":")[0];
    let h = 0;
    for (let i = 0; i < module.length; i += 1) h = (h * 31 + module.charCodeAt(i)) >>> 0;
    return "hsl(" + (12 + (h % 40)) + ", 75%, " + (58 + (h % 5) * 3) + "%)";
  }
  // An icicle: the outermost frame on top, each frame as wide as its share of the samples.
  // Clicking a frame zooms into it (its callers stay above, full width); "all" zooms out.
  function flame(box, root, key) {
    clear(box);
    if (!root.value) { box.appendChild(note("No profiler samples of this route in this range.")); return; }
    if (zoomed.key !== key) zoomed = { key: key, path: [] };
    let focus = root;
    const chain = [root];
    for (const name of zoomed.path) {
      const next = focus.children.get(name);
      if (!next) break;
      focus = next;
      chain.push(next);
    }
    const width = Math.max(260, box.clientWidth || 800);
    const rowH = 18;
    const rows = [];
    chain.slice(0, -1).forEach((node, d) => rows.push([node, d, 0, width, chain.slice(1, d + 1).map((n) => n.name), true]));
    (function walk(node, depth, x, w, path) {
      rows.push([node, depth, x, w, path, false]);
      let at = x;
      for (const child of [...node.children.values()].sort((a, b) => b.value - a.value || (a.name < b.name ? -1 : 1))) {
        const cw = (child.value / node.value) * w;
        if (cw >= 0.5) walk(child, depth + 1, at, cw, path.concat([child.name]));
        at += cw;
      }
    })(focus, chain.length - 1, 0, width, zoomed.path.slice(0, chain.length - 1));
    const depth = Math.max(...rows.map((r) => r[1])) + 1;
    const chart = svg("svg", { viewBox: `0 0 ${width} ${depth * rowH}`, role: "img",
      "aria-label": "Flame graph of " + num(root.value) + " samples", "data-samples": root.value });
    for (const [node, d, x, w, path, above] of rows) {
      const g = svg("g", { class: "frame" + (above ? " above" : ""), tabindex: 0, "data-frame": node.name });
      g.appendChild(svg("rect", { x: x.toFixed(2), y: d * rowH, width: Math.max(0.5, w - 0.5).toFixed(2), height: rowH - 1,
        fill: node === root ? "var(--cx)" : hue(node.name) }));
      g.appendChild(svg("title", {}, node.name + " — " + num(node.value) + " samples (" + pct((100 * node.value) / root.value) + ")"));
      const room = Math.floor((w - 6) / 6.6);
      if (room >= 3) {
        const label = node.name.length > room ? node.name.slice(0, room - 1) + "…" : node.name;
        g.appendChild(svg("text", { x: (x + 3).toFixed(2), y: d * rowH + 13 }, label));
      }
      const go = () => { zoomed = { key: key, path: path }; flame(box, root, key); };
      g.addEventListener("click", go);
      g.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); } });
      chart.appendChild(g);
    }
    box.appendChild(chart);
    box.appendChild(note(zoomed.path.length ? "Zoomed into " + focus.name + ": click \"all\" or a caller above to zoom out."
      : "Outermost call on top; click a frame to zoom in, hover for its share."));
  }

  // -- route page ------------------------------------------------------------------------
  async function routePage(route, params, w, mount) {
    const method = params.get("method") || null;
    const kind = params.get("kind") || null;
    const q = { from: w.from, to: w.to };
    if (method) q.method = method;
    if (kind) q.kind = kind;
    const name = (method ? method + " " : "") + route;
    let data;
    try {
      data = await api("routes/" + enc(route), q);
    } catch (err) {
      if (err.status !== 404) throw err;
      mount(page([heading([["Route", null]], name),
        card(null, [note("No request to this route in the last " + periodOf(w) + ". Pick a longer range above.", "")])]));
      return;
    }
    const m = data.method;
    const k = data.kind || kind || "http";
    const series = { metric: "rate,error_rate,latency_p50,latency_p95,latency_p99", route: data.route,
      from: w.from, to: w.to, step: w.step, kind: k };
    if (m) series.method = m;
    const profileQuery = { route: data.route, from: w.from, to: w.to, format: "json" };
    if (m) profileQuery.method = m;
    const [ts, prof] = await Promise.all([
      api("metrics/timeseries", series),
      (data.profile || {}).available ? api("profile", profileQuery) : Promise.resolve(null),
    ]);
    const s = data.stats || {};
    const others = (data.methods || []).filter((x) => x !== m);
    const also = others.length ? line(["Also answered for "].concat(others.flatMap((x, i) => [
      i ? ", " : "", el("a", { href: href.route(data.route, x, k) }, x)]))) : null;
    const rateBox = el("div", { class: "chart", id: "route-rate" });
    const errorBox = el("div", { class: "chart", id: "route-errors" });
    const latencyBox = el("div", { class: "chart", id: "route-latency" });
    const histBox = el("div", { class: "chart histogram" });
    const mixBox = el("div", { class: "mix" });
    const flameBox = el("div", { class: "flame" });
    const exemplar = (e) => [
      requestLink(e.request_id, when(e.timestamp), "request-time"), [text(e.status_code), "num"],
      [ms(e.duration_ms), "num"], [e.path + (e.query ? "?" + e.query : ""), "route"], requestLink(e.request_id)];
    const heads = ["Time", ["Status", "num"], ["Duration", "num"], "Path", "Request id"];
    const flameKey = data.route + "\u0000" + m + "\u0000" + k;
    const tree = prof ? stackTree(prof.stacks || []) : null;
    const body = page([
      heading([["Route", null]], (m ? m + " " : "") + data.route,
        [k !== "http" ? line(["A " + k + " name, not an HTTP route"]) : null, also]),
      tiles([["requests", "Requests", num(s.requests)], ["rate_per_minute", "Per minute", num(s.rate_per_minute)],
        ["error_rate_percent", "Error rate", pct(s.error_rate_percent)], ["p50_ms", "p50", ms(s.p50_ms)],
        ["p95_ms", "p95", ms(s.p95_ms)], ["p99_ms", "p99", ms(s.p99_ms)]], "six"),
      grid([
        card("Requests per second", [rateBox]),
        card("Error rate (%)", [errorBox]),
        card("Latency (ms)", [latencyBox], "wide"),
        card("Latency histogram", [histBox]),
        card("Status codes", [mixBox]),
      ]),
      grid([
        card("Slowest requests", [table(heads, data.slowest || [], exemplar, "No request of this route was kept in this range")], "wide"),
        card("Failing requests", [table(heads.concat(["Exception"]), data.failing || [], (e) => exemplar(e).concat([e.exception]),
          "No failing request in this range")], "wide"),
        card("Error groups", [table(["Type", "Message", ["Count", "num"], "Last seen"], data.error_groups || [],
          (g) => [groupLink(g.group_id, g.type), [g.message, "message"], [num(g.count), "num"], when(g.last_seen)],
          "No unhandled exception in this range")], "wide"),
        card(prof ? "Where the time goes (" + num(prof.total) + " samples)" : "Where the time goes", [
          tree ? flameBox : note("No profiler samples of this route in this range. The profiler is off unless"
            + " INSTRUMENT_PROFILER=true.")], "wide"),
      ]),
    ]);
    const draw = [
      () => ui.lineChart(rateBox, ts.timestamps, [{ name: "requests/s", values: ts.series.rate }], num),
      () => ui.lineChart(errorBox, ts.timestamps, [{ name: "error %", values: ts.series.error_rate }], (v) => num(v, 1)),
      () => ui.lineChart(latencyBox, ts.timestamps, [
        { name: "p50", values: ts.series.latency_p50 }, { name: "p95", values: ts.series.latency_p95 },
        { name: "p99", values: ts.series.latency_p99 }], num),
      () => histogram(histBox, data.histogram || []),
      () => ui.statusMix(mixBox, data.status_codes),
    ];
    if (tree) draw.push(() => flame(flameBox, tree, flameKey));
    return mount(body, draw);
  }

  // -- request page ------------------------------------------------------------------------
  const REASONS = { slow: "one of the slowest of its route and minute", error: "it failed" };

  async function requestPage(id, w, mount) {
    let data;
    try {
      data = await api("requests/" + enc(id));
    } catch (err) {
      if (err.status !== 404) throw err;
      mount(page([heading([["Request", null]], "Request " + id), card(null, [
        note("This request was not kept, or is no longer: the kit keeps the slowest few requests of each"
          + " route and minute, every failing one (up to a cap) and the log lines of every request, for"
          + " as long as the retention allows. The others are in the totals and charts, not one by one.", "")])]));
      return;
    }
    const r = data.request;
    const group = data.error_group;
    const groupText = group ? (group.type || "error") + (group.message ? ": " + group.message : "") : "";
    const title = r ? (r.method || "") + " " + r.path + (r.query ? "?" + r.query : "") : "Request " + data.request_id;
    const sub = r ? line([text(r.status_code) + " in " + ms(r.duration_ms) + " · " + when(r.timestamp) + " · route ",
      routeOf("http", r.route, r.method)]) : line(["Not kept as an exemplar; the log lines it wrote are below."]);
    const groupLine = group ? line(["Error group: ", groupLink(group.group_id, groupText)]) : null;
    const logs = data.logs || [];
    const body = page([
      heading([["Request", null]], title, [sub, groupLine]),
      grid([
        r ? card("Request", [fields([
          ["Request id", data.request_id, "mono"], ["Time", when(r.timestamp)], ["Method", r.method],
          ["Route", routeOf("http", r.route, r.method)], ["Path", r.path, "mono"], ["Query", r.query, "mono"],
          ["Status", r.status_code], ["Duration", ms(r.duration_ms)], ["Time to first byte", ms(r.ttfb_ms)],
          ["Request body", bytes(r.request_bytes)], ["Response body", bytes(r.response_bytes)],
          ["Client", r.client], ["User agent", r.user_agent], ["Exception", r.exception],
          ["Error group", group ? groupLink(group.group_id, groupText) : null],
          ["Trace id", r.trace_id, "mono"], ["Kept because", REASONS[r.reason] || r.reason], ["Process", r.pid],
        ])], "wide") : null,
        card("Log lines (" + num(logs.length) + ")", [table(["Time", "Level", "Logger", "Message"], logs,
          (l) => [when(l.timestamp), [l.level, "lvl-" + l.level], l.logger,
            [l.message + (l.exception ? "\n" + l.exception : ""), "message"]], "It logged nothing")], "wide"),
        (data.others || []).length ? card("Also kept under this id", [table(["Time", "Route", ["Status", "num"], ["Duration", "num"], "Process"],
          data.others, (o) => [when(o.timestamp), routeOf("http", o.route, o.method), [text(o.status_code), "num"],
            [ms(o.duration_ms), "num"], text(o.pid)])], "wide") : null,
      ]),
    ]);
    return mount(body, []);
  }

  // -- errors view and group page --------------------------------------------------------
  function routeList(routes) {
    const box = el("span", { class: "routes" });
    (routes || []).forEach((x, i) => {
      if (i) box.appendChild(document.createTextNode(", "));
      box.appendChild(routeOf(x.kind || "http", x.route, x.method));
    });
    if (!(routes || []).length) box.textContent = DASH;
    return box;
  }

  async function errorsPage(w, mount) {
    const data = await api("errors", { from: w.from, to: w.to });
    const groups = data.groups || [];
    const body = page([
      heading([["Errors", null]], "Errors", [line([num(groups.length) + (groups.length === 1 ? " group" : " groups")
        + " of unhandled exceptions in the last " + periodOf(w) + "; one group is one bug, on however many routes."])]),
      card("Error groups", [data.available === false ? note("This store has no error groups yet.")
        : table(["Type", "Message", ["Count", "num"], ["Ever", "num"], "First seen", "Last seen", "Routes", "Over the range"],
          groups, (g) => [groupLink(g.group_id, g.type), [g.message, "message"], [num(g.count), "num"], [num(g.total), "num"],
            when(g.first_seen), when(g.last_seen), routeList(g.routes), sparkline(g.sparkline || [], data.bucket_seconds)],
          "No unhandled exception in this range")], "wide errors-list"),
    ]);
    return mount(body, []);
  }

  // Frames outermost first; runs of two or more library frames fold into one line to open.
  function frameList(frames) {
    const list = el("ol", { class: "traceback" });
    const anyApp = frames.some((f) => f.in_app);
    const frame = (f) => {
      const li = el("li", { class: f.in_app ? "in-app" : "library" });
      li.appendChild(el("span", { class: "where" }, f.file + ":" + f.line + " in " + f.function));
      if (f.code) li.appendChild(el("code", {}, f.code));
      return li;
    };
    for (let i = 0; i < frames.length;) {
      if (frames[i].in_app) { list.appendChild(frame(frames[i])); i += 1; continue; }
      let j = i;
      while (j < frames.length && !frames[j].in_app) j += 1;
      if (j - i < 2) { list.appendChild(frame(frames[i])); i = j; continue; }
      const run = el("li", { class: "library-run" });
      const details = run.appendChild(el("details", anyApp ? {} : { open: "" }));
      details.appendChild(el("summary", {}, (j - i) + " library frames"));
      const inner = details.appendChild(el("ol", { class: "traceback" }));
      for (let k = i; k < j; k += 1) inner.appendChild(frame(frames[k]));
      list.appendChild(run);
      i = j;
    }
    if (!frames.length) list.appendChild(el("li", { class: "muted" }, "No frames were recorded."));
    return list;
  }

  async function groupPage(id, w, mount) {
    let data;
    try {
      data = await api("errors/" + enc(id), { from: w.from, to: w.to });
    } catch (err) {
      if (err.status !== 404 && err.status !== 400) throw err;
      mount(page([heading([["Errors", "#/errors"], ["Group", null]], "Error group " + id),
        card(null, [note("There is no error group " + id + " in this store.", "")])]));
      return;
    }
    const g = data.group;
    const tb = g.traceback || { frames: [] };
    const occurrences = g.occurrences || [];
    const countBox = el("div", { class: "chart" });
    const tracebackParts = [
      el("p", { class: "exception" }, (tb.type || g.type) + ": " + text(tb.message === undefined ? g.message : tb.message)),
      frameList(tb.frames || []),
    ];
    if (tb.cause) {
      tracebackParts.push(el("p", { class: "muted" }, "It was raised from, or while handling, this exception:"));
      tracebackParts.push(el("p", { class: "exception" }, tb.cause.type + ": " + text(tb.cause.message)));
      tracebackParts.push(frameList(tb.cause.frames || []));
    }
    const body = page([
      heading([["Errors", "#/errors"], ["Group", null]], g.type + ": " + (g.message || ""),
        [g.culprit ? line(["In " + g.culprit]) : null]),
      tiles([["count", "In this range", num(g.count)], ["total", "Ever", num(g.total)],
        ["first_seen", "First seen", when(g.first_seen)], ["last_seen", "Last seen", when(g.last_seen)]], "four"),
      grid([
        card("Occurrences", [countBox]),
        card("Routes", [table(["Kind", "Method", "Route", ["Count", "num"]], g.routes || [],
          (x) => [x.kind, x.method, [routeOf(x.kind, x.route, x.method), "route"], [num(x.count), "num"]])]),
        card("Latest traceback", tracebackParts, "wide"),
        card("Recent occurrences", [table(["Time", "Route", ["Status", "num"], "Request id", "Trace id", "Process"], occurrences,
          (o) => [when(o.timestamp), [routeOf(o.kind, o.route, o.method), "route"], [text(o.status_code), "num"],
            requestLink(o.request_id), [text(o.trace_id), "mono"], text(o.pid)], "None in this range")], "wide"),
      ]),
    ]);
    return mount(body, [() => perStep(countBox, g.per_minute, w)]);
  }

  // -- entry points ----------------------------------------------------------------------
  function failed(err) {
    return page([heading([], "Could not load this page"), card(null, [note(String(err.message || err), "")])]);
  }

  ui.pages = {
    // view: {path, params} from the hash; w: the range (from, to, step); mount(node) puts the
    // page in place, or says false when another view was asked for meanwhile.
    async render(view, w, mount) {
      const [what, ...rest] = view.path;
      const id = rest.join("/");
      const place = (node, draw) => {
        if (!mount(node)) return false;
        drawers = draw || [];
        for (const d of drawers) d();
        return true;
      };
      try {
        if (what === "routes" && id) return await routePage(id, view.params, w, place);
        if (what === "requests" && id) return await requestPage(id, w, place);
        if (what === "errors" && !id) return await errorsPage(w, place);
        if (what === "errors") return await groupPage(id, w, place);
        return place(page([heading([], "No such page"), card(null, [note("Nothing is at this address.", "")])]));
      } catch (err) {
        if (String(err.message) !== "signed out") place(failed(err));
        throw err;
      }
    },
    resize() { for (const d of drawers) d(); },
  };
})();
