// Throughline console: hand-written, no dependencies, served from the binary.
//
// Four pages behind the hash: `#/` (overview), `#/view/NAME` (a view, live),
// `#/profile/TYPE:VALUE` (a customer) and `#/new-view` (write a view, preview, save). Everything shown comes from the server's own JSON:
// `/v1/stats`, the change subscription and the explanation; nothing of the SPEC's rules is
// recomputed here. Data is only ever put in the page as text (never as markup).
"use strict";

const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const SVG = "http://www.w3.org/2000/svg";
// the identity graph draws at most this many identifiers per layer (the server says how many:
// `max_drawn` in /v1/stats, from src/io/console MAX_DRAWN)
const maxDrawn = () => (stats && stats.max_drawn) || 12;
// the live table shows at most this many rows (the filter narrows them)
const MAX_ROWS = 500;
const PALETTE = ["#2f5bd3", "#1f8a4c", "#b7791f", "#8e44ad", "#c2362b", "#138d90", "#7f8c8d"];

let stats = null; // the last /v1/stats answer
let leave = () => {}; // what the current page does when another opens
let generation = 0; // counts page opens: a page whose answer arrives late draws nothing

// ---- small helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "onclick" || k === "onsubmit" || k === "oninput") node[k] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { body = { error: text }; }
  return { status: response.status, body };
}

function fmtNumber(n) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: 2 });
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function fmtTime(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace(".000Z", "Z");
}

function cite(ref) {
  if (!ref) return el("span", { class: "cite", text: "default" });
  const id = ref.messageId ? `${ref.messageId} · ` : "";
  return el("span", {
    class: "cite",
    text: `${id}${ref.source}:${ref.line} · ${fmtTime(ref.timestamp)}`,
  });
}

function value(v) {
  if (Array.isArray(v)) return v.join(", ");
  if (v !== null && typeof v === "object") return JSON.stringify(v);
  return v === null || v === undefined ? "" : String(v);
}

function typeOf(identifier) {
  const at = identifier.indexOf(":");
  return at < 0 ? identifier : identifier.slice(0, at);
}

function colourOf(type) {
  const names = (stats && stats.identifiers || []).map((t) => t.name);
  const i = names.indexOf(type);
  return PALETTE[(i < 0 ? names.length : i) % PALETTE.length];
}

async function refreshStats() {
  const { status, body } = await getJSON("/v1/stats");
  if (status !== 200) throw new Error(body.error || `status ${status}`);
  stats = body;
  const nav = document.getElementById("views-nav");
  const current = location.hash;
  nav.replaceChildren(...stats.views.map((v) => el("a", {
    href: `#/view/${encodeURIComponent(v.name)}`,
    class: current === `#/view/${encodeURIComponent(v.name)}` ? "current" : null,
    text: v.name,
  })));
  const recovering = stats.recovering
    ? `recovering: ${fmtNumber(stats.recovering.replayed)} of ${fmtNumber(stats.recovering.of)} logged lines replayed · `
    : "";
  // a rebuild for a new spec (PUT /v1/spec): its progress, or how the last one ended
  const r = stats.rebuild;
  const rebuild = !r ? ""
    : r.running ? `rebuilding for a new spec: ${r.phase}, ${fmtNumber(r.lines)} of ${fmtNumber(r.of)} logged lines · `
    : r.failed ? `the last rebuild failed: ${r.failed} · `
    : r.switched ? `spec version ${r.switched.version} since engine time ${new Date(r.switched.engine_time).toISOString()} · `
    : "";
  statusLine.textContent = recovering + rebuild + `${fmtNumber(stats.totals.accepted)} events accepted · ` +
    `log ${fmtBytes(stats.log_bytes)} · updated ${new Date(stats.at).toLocaleTimeString()}`;
  return stats;
}

// ---- charts ------------------------------------------------------------------------------

// A small line chart of `series` (objects with `at`) for the given keys.
function lineChart(series, keys, unit) {
  const w = 320, h = 110, left = 44, bottom = 18;
  const root = svg("svg", { width: w, height: h, viewBox: `0 0 ${w} ${h}`, class: "chart" });
  const values = series.flatMap((p) => keys.map((k) => p[k]).filter((x) => x !== null));
  const max = Math.max(1, ...values);
  const t0 = series.length ? series[0].at : 0;
  const t1 = series.length ? series[series.length - 1].at : 1;
  const x = (t) => left + (w - left - 6) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
  const y = (v) => h - bottom - (h - bottom - 8) * (v / max);
  root.append(
    svg("line", { class: "axis", x1: left, y1: h - bottom, x2: w - 4, y2: h - bottom }),
    svg("line", { class: "axis", x1: left, y1: 6, x2: left, y2: h - bottom }),
    svg("text", { x: left - 4, y: 14, "text-anchor": "end", text: fmtNumber(max) }),
    svg("text", { x: left - 4, y: h - bottom, "text-anchor": "end", text: "0" }),
    svg("text", { x: w - 4, y: h - 4, "text-anchor": "end", text: unit }),
  );
  keys.forEach((k, i) => {
    const points = series.filter((p) => p[k] !== null).map((p) => `${x(p.at)},${y(p[k])}`);
    if (points.length) {
      root.append(svg("polyline", { class: i ? "series2" : "series", points: points.join(" ") }));
    }
  });
  if (!series.length) {
    root.append(svg("text", { x: left + 10, y: h / 2, text: "collecting samples…" }));
  }
  return root;
}

// ---- overview ----------------------------------------------------------------------------

// what the engine holds (SPEC section 9): events within their horizon, retired ones (a
// count per identifier set), the records that can still win, the dedup window's ids
function held(r) {
  if (!r) return null;
  return el("div", { class: "card", id: "held" },
    el("h3", { text: "Held in memory" }),
    el("div", { class: "big", text: `${fmtNumber(r.live_events)} live events` }),
    el("div", {
      class: "quiet",
      text: `${fmtNumber(r.retired_events)} retired (kept as counts in ${fmtNumber(r.identifier_sets)} ` +
        `identifier sets), ${fmtNumber(r.records)} records that can still win, ` +
        `${fmtNumber(r.sequence_roles)} sequence roles, ${fmtNumber(r.dedup_window_ids)} messageIds in the dedup window`,
    }));
}

function overview() {
  let timer = null;
  const draw = () => {
    const series = stats.series;
    const last = series.length ? series[series.length - 1] : {};
    const views = el("table", { id: "views" },
      el("tr", {}, el("th", { text: "view" }), el("th", { text: "purpose" }),
        el("th", { class: "num", text: "rows" })),
      ...stats.views.map((v) => el("tr", { "data-view": v.name },
        el("td", {}, el("a", { href: `#/view/${encodeURIComponent(v.name)}`, text: v.name }),
          v.internal ? el("span", { class: "quiet", text: " (internal)" }) : null),
        el("td", { text: v.purpose || "–" }),
        el("td", { class: "num rows", text: fmtNumber(v.rows) }))));
    const card = (title, big, chart) =>
      el("div", { class: "card" }, el("h3", { text: title }), el("div", { class: "big", text: big }), chart);
    const compaction = stats.last_compaction;
    // each sink: delivering, or since when it is not; what it holds and has confirmed
    const sinks = (stats.sinks || []).map((s) =>
      el("div", { class: "card sink", "data-sink": s.name },
        el("h3", { text: `Sink ${s.name}` }),
        el("div", { class: s.stalled ? "big error" : "big", text: s.stalled ? "not delivering" : "delivering" }),
        el("div", {
          class: "quiet",
          text: (s.stalled ? `since ${fmtTime(s.stalled.since)}: ${s.stalled.why}. ` : "") +
            `${fmtNumber(s.backlog)} changes waiting (lag ${(s.lag_ms / 1000).toFixed(1)} s), ${fmtNumber(s.delivered)} delivered, ` +
            `confirmed to log line ${fmtNumber(s.confirmed)}`,
        })));
    main.replaceChildren(
      el("h1", { text: "Overview" }),
      el("div", { class: "cols" },
        el("div", {}, el("h2", { text: "Views" }), views),
        el("div", {}, el("h2", { text: "Storage" }),
          el("div", { class: "card" },
            el("h3", { text: "Event log" }),
            el("div", { class: "big", text: fmtBytes(stats.log_bytes) }),
            el("div", {
              class: "quiet", id: "log-kinds",
              text: `${fmtBytes(stats.log_kinds.lines)} of received lines, ` +
                `${fmtBytes(stats.log_kinds.spans)} of spans standing for retired lines, ` +
                `${fmtBytes(stats.log_kinds.residues)} of other residues (dead letters, duplicates, erasures)`,
            }),
            el("div", {
              class: "quiet",
              text: compaction
                ? `last compaction ${fmtTime(compaction.at)}: ${fmtNumber(compaction.records)} records, ` +
                  `${fmtNumber(compaction.reduced)} reduced, ${fmtBytes(compaction.bytes_before)} → ${fmtBytes(compaction.bytes_after)}`
                : "no compaction since the server started",
            })),
          held(stats.retained),
          ...sinks)),
      el("h2", { text: "Last ten minutes" }),
      el("div", { class: "cards" },
        card("Ingestion (lines/s)", fmtNumber(last.events_per_s || 0),
          lineChart(series, ["events_per_s"], "lines/s")),
        card("Dead letters (per sample)", fmtNumber(stats.totals.dead_letters) + " total",
          lineChart(series, ["dead_letters"], "dead letters")),
        card("Suppressed (per sample)", fmtNumber(stats.totals.suppressed) + " total",
          lineChart(series, ["suppressed"], "suppressed")),
        card("Ingest to output (ms, p50 blue, p99 amber)",
          last.p99_ms === null || last.p99_ms === undefined ? "–" : `p99 ≤ ${fmtNumber(last.p99_ms)} ms`,
          lineChart(series, ["p50_ms", "p99_ms"], "ms"))),
    );
  };
  const tick = async () => {
    try {
      await refreshStats();
      draw();
    } catch (e) {
      main.replaceChildren(el("p", { class: "error", text: `cannot read /v1/stats: ${e.message}` }));
    }
    timer = setTimeout(tick, stats ? stats.sample_every_ms || 2000 : 2000);
  };
  tick();
  return () => clearTimeout(timer);
}

// ---- a view, live ------------------------------------------------------------------------

function viewPage(name) {
  const rows = new Map(); // key -> row (JSON text)
  const flash = new Map(); // key -> { kind: "added" | "removed", until, row }
  const columns = [];
  let filter = "";
  let dirty = true;
  let frame = null;
  const count = el("span", { class: "quiet", id: "row-count" });
  const table = el("table", { id: "rows", "data-view": name });
  const input = el("input", {
    type: "search", placeholder: "filter rows (key or value)", id: "filter",
    oninput: () => { filter = input.value.toLowerCase(); schedule(); },
  });
  const state = el("span", { class: "quiet", id: "stream-state", text: "connecting…" });
  main.replaceChildren(el("h1", { text: `View ${name}` }),
    el("div", { class: "toolbar" }, input, count, state), table);

  function noteColumns(row) {
    for (const k of Object.keys(row)) if (!columns.includes(k)) columns.push(k);
  }

  function apply(line) {
    const change = JSON.parse(line);
    if (change.error) { state.textContent = change.error; return; }
    const text = JSON.stringify(change.row);
    noteColumns(change.row);
    if (change.diff === undefined) { // a snapshot row
      rows.set(change.key, text);
    } else if (change.diff > 0) {
      rows.set(change.key, text);
      flash.set(change.key, { kind: "added", until: Date.now() + 1500 });
    } else if (rows.get(change.key) === text) {
      // removed, unless its replacement already arrived (same time, other row)
      rows.delete(change.key);
      flash.set(change.key, { kind: "removed", until: Date.now() + 1500, row: text });
    }
    schedule();
  }

  // redraws at most ten times a second, however fast changes arrive
  function schedule() {
    dirty = true;
    if (frame === null) frame = setTimeout(render, 100);
  }

  function render() {
    frame = null;
    if (!dirty) return;
    dirty = false;
    const now = Date.now();
    for (const [k, f] of flash) if (f.until <= now) flash.delete(k);
    const shown = [];
    const keys = new Set([...rows.keys(), ...flash.keys()]);
    for (const key of [...keys].sort()) {
      const row = rows.get(key) || (flash.get(key) || {}).row;
      if (row === undefined) continue;
      if (filter && !key.toLowerCase().includes(filter) && !row.toLowerCase().includes(filter)) continue;
      shown.push([key, row]);
    }
    count.textContent = `${fmtNumber(rows.size)} rows` +
      (shown.length > MAX_ROWS ? `, showing the first ${MAX_ROWS} of ${fmtNumber(shown.length)} that match` : "");
    table.replaceChildren(
      el("tr", {}, el("th", { text: "key" }), ...columns.map((c) => el("th", { text: c }))),
      ...shown.slice(0, MAX_ROWS).map(([key, text]) => {
        const row = JSON.parse(text);
        const f = flash.get(key);
        return el("tr", { "data-key": key, class: f ? f.kind : null },
          el("td", {}, el("a", { href: `#/profile/${encodeURIComponent(key)}`, text: key })),
          ...columns.map((c) => el("td", { text: value(row[c]) })));
      }));
    if (flash.size) setTimeout(schedule, 250);
  }

  const source = new EventSource(`/v1/views/${encodeURIComponent(name)}/changes`);
  source.onopen = () => { state.textContent = "live"; };
  source.onmessage = (event) => apply(event.data);
  source.onerror = () => { state.textContent = "reconnecting…"; rows.clear(); };
  return () => { source.close(); clearTimeout(frame); };
}

// ---- a customer --------------------------------------------------------------------------

async function profilePage(identifier) {
  const opened = generation;
  main.replaceChildren(el("h1", { text: identifier }), el("p", { class: "quiet", text: "Loading…" }));
  if (!stats) await refreshStats().catch(() => {});
  const { status, body } = await getJSON(`/v1/profiles/${encodeURIComponent(identifier)}/explain`);
  if (opened !== generation) return; // another page opened meanwhile
  if (status === 404) {
    main.replaceChildren(el("h1", { text: identifier }),
      el("p", { id: "not-found", text: `No profile holds ${identifier} now` +
        " (never seen, erased, or every event of it retracted)." }));
    return;
  }
  if (status === 200 && body.status === "suppressed") {
    main.replaceChildren(el("h1", { text: identifier }),
      el("p", { id: "suppressed", text: `${identifier} was erased: nothing is kept about it, ` +
        "and events carrying it are dropped." }));
    return;
  }
  if (status !== 200) {
    main.replaceChildren(el("h1", { text: identifier }),
      el("p", { class: "error", text: body.error || `status ${status}` }));
    return;
  }
  const x = body;
  const byType = new Map();
  for (const m of x.identity.identifiers) {
    const t = typeOf(m.identifier);
    if (!byType.has(t)) byType.set(t, []);
    byType.get(t).push(m.identifier.slice(t.length + 1));
  }
  const views = x.views.map((v) => {
    const failing = v.conditions.filter((c) => !c.holds).map((c) => c.condition);
    return el("tr", { "data-view": v.view },
      el("td", { text: v.view }),
      el("td", { class: v.in ? "yes" : "no", text: v.in ? "in" : "out" }),
      el("td", {}, ...(v.conditions.length ? v.conditions : [{ condition: "always", holds: true }])
        .map((c) => el("div", { class: c.holds ? "" : "no",
          text: `${c.holds ? "✓" : "✗"} ${c.condition}${c.value === undefined ? "" : ` (${value(c.value)})`}` }))),
      el("td", { class: "quiet", text: v.in ? "" : `kept out by: ${failing.join("; ")}` }));
  });
  main.replaceChildren(
    el("h1", { text: `Customer ${x.profile}` }),
    el("p", { class: "quiet", text: `${x.identity.anchored ? "anchored" : "anonymous"} profile · ` +
      `${fmtNumber(x.identity.events)} events · explained at ${fmtTime(x.at)}` +
      (x.identifier !== x.profile ? ` · found by ${x.identifier}` : "") }),
    el("div", { class: "cols" },
      el("div", {},
        el("h2", { text: "Identifiers" }),
        el("table", { id: "identifiers" }, ...[...byType].map(([t, values]) => el("tr", {},
          el("th", { text: t }), el("td", {}, ...values.map((v) => el("span", { class: "pill", text: v })))))),
        el("h2", { text: "Traits" }),
        x.traits.length ? el("table", { id: "traits" }, ...x.traits.map((t) => el("tr", {},
          el("th", { text: t.key }), el("td", { text: value(t.value) }), el("td", {}, cite(t.event)))))
          : el("p", { class: "quiet", text: "none" }),
        el("h2", { text: "Consent" }),
        el("table", { id: "consent" }, ...x.consent.map((c) => el("tr", { "data-purpose": c.purpose },
          el("th", { text: c.purpose }),
          el("td", { class: c.granted ? "yes" : "no", text: c.granted ? "granted" : "denied" }),
          el("td", {}, c.default ? el("span", { class: "cite", text: "the spec's default (no record)" }) : cite(c.decided_by),
            c.tie ? el("span", { class: "cite", text: " · a tie, decided by the rule for ties" }) : null))))),
      el("div", {},
        el("h2", { text: `Score ${value(x.score.value)}` }),
        scoreChart(x),
        el("h2", { text: "Views" }),
        el("table", { id: "profile-views" }, ...views))),
    el("h2", { text: "Identity graph" }),
    graphLegend(byType),
    identityGraph(x),
    erasure(x),
  );
}

// The score over time: each contribution's curve (thin) and their sum (thick), solid up to
// the explanation's time and dashed after it.
function scoreChart(x) {
  const curves = x.score.contributions.map((c) => c.curve.map((p) => [p.at, Number(p.weight)]));
  if (!curves.length) return el("p", { class: "quiet", text: "no contribution weighs anything now" });
  const times = [...new Set(curves.flat().map(([t]) => t).concat([x.at]))].sort((a, b) => a - b);
  const weightAt = (curve, t) => {
    let w = 0;
    for (const [at, v] of curve) { if (at <= t) w = v; else break; }
    return w;
  };
  const total = (t) => curves.reduce((sum, c) => sum + weightAt(c, t), 0);
  const w = 560, h = 220, left = 48, bottom = 28;
  const t0 = times[0], t1 = times[times.length - 1];
  const max = Math.max(1, ...times.map(total));
  const X = (t) => left + (w - left - 10) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
  const Y = (v) => h - bottom - (h - bottom - 10) * (v / max);
  // a step line of valueAt over [from, to]: flat between the times it changes
  const steps = (valueAt, from, to) => {
    let prev = valueAt(from);
    const out = [`${X(from)},${Y(prev)}`];
    for (const t of times) {
      if (t <= from || t > to) continue;
      out.push(`${X(t)},${Y(prev)}`);
      prev = valueAt(t);
      out.push(`${X(t)},${Y(prev)}`);
    }
    out.push(`${X(to)},${Y(prev)}`);
    return out.join(" ");
  };
  const root = svg("svg", { id: "score-chart", width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  root.append(
    svg("line", { class: "axis", x1: left, y1: h - bottom, x2: w - 6, y2: h - bottom }),
    svg("line", { class: "axis", x1: left, y1: 8, x2: left, y2: h - bottom }),
    svg("text", { x: left - 4, y: 16, "text-anchor": "end", text: fmtNumber(max) }),
    svg("text", { x: left - 4, y: h - bottom, "text-anchor": "end", text: "0" }),
    svg("text", { x: left, y: h - 8, text: fmtTime(t0).slice(0, 10) }),
    svg("text", { x: w - 6, y: h - 8, "text-anchor": "end", text: fmtTime(t1).slice(0, 10) }),
  );
  for (const c of curves) {
    root.append(svg("polyline", { class: "part", points: steps((t) => weightAt(c, t), t0, t1) }));
  }
  root.append(
    svg("polyline", { class: "total", points: steps(total, t0, x.at) }),
    svg("polyline", { class: "total future", points: steps(total, x.at, t1) }),
    svg("line", { class: "now", x1: X(x.at), y1: 8, x2: X(x.at), y2: h - bottom }),
    svg("text", { x: X(x.at) + 3, y: 18, text: "now" }),
  );
  return root;
}

function graphLegend(byType) {
  const items = [...byType.keys()].map((t) => {
    const dot = svg("svg", { width: 12, height: 12 }, svg("circle", { cx: 6, cy: 6, r: 5, fill: colourOf(t) }));
    dot.setAttribute("class", "dot");
    return el("span", {}, dot, ` ${t}`);
  });
  return el("p", { class: "legend quiet" }, ...items,
    el("span", { text: "· bold: the paths that decided the label · grey: other profiles · red ring: a hub" }));
}

// The identity graph, layered by each identifier's distance to the profile's root along its
// label path (the explanation's `path`); a layer of more than MAX_DRAWN identifiers shows the
// first ones (those on label paths first) and a summary of the rest by type.
function identityGraph(x) {
  const MAX_DRAWN = maxDrawn();
  const members = x.identity.identifiers;
  const hubs = new Set(x.identity.hubs.map((h) => h.identifier));
  const pathEdges = new Set();
  for (const m of members) for (const e of m.path) pathEdges.add([e.from, e.to].sort().join("\u0000"));
  const layers = [];
  for (const m of members) {
    const d = m.path.length;
    (layers[d] = layers[d] || []).push(m.identifier);
  }
  const onPath = (id) => [...pathEdges].some((k) => k.split("\u0000").includes(id));
  const drawn = new Map(); // identifier -> [x, y]
  const summaries = [];
  const w = Math.max(640, (Math.min(MAX_DRAWN, Math.max(...layers.map((l) => (l || []).length), 1)) + 1) * 150 + 200);
  const layerY = (i) => 40 + i * 110;
  layers.forEach((ids, i) => {
    if (!ids) return;
    const sorted = [...ids].sort((a, b) => (onPath(b) - onPath(a)) || (a < b ? -1 : 1));
    const shown = sorted.slice(0, MAX_DRAWN);
    const rest = sorted.slice(MAX_DRAWN);
    const slots = shown.length + (rest.length ? 1 : 0);
    shown.forEach((id, j) => drawn.set(id, [((j + 0.5) * (w - 180)) / slots + 20, layerY(i)]));
    if (rest.length) {
      const counts = {};
      for (const id of rest) counts[typeOf(id)] = (counts[typeOf(id)] || 0) + 1;
      summaries.push({ x: ((shown.length + 0.5) * (w - 180)) / slots + 20, y: layerY(i),
        text: `+${rest.length} more: ` + Object.entries(counts).map(([t, n]) => `${n} ${t}`).join(", ") });
    }
  });
  // other profiles' identifiers, in a column on the right
  const others = [];
  for (const link of x.identity.links_out) {
    if (!drawn.has(link.from) || others.some((o) => o.id === link.to)) continue;
    if (others.length >= MAX_DRAWN) break;
    others.push({ id: link.to, profile: link.profile });
  }
  others.forEach((o, i) => drawn.set(o.id, [w - 80, 40 + i * 46]));
  const h = Math.max(layerY(layers.length - 1) + 60, 40 + others.length * 46 + 20, 160);
  const root = svg("svg", { id: "identity-graph", width: w, height: h, viewBox: `0 0 ${w} ${h}` });
  const edge = (e, cls) => {
    const a = drawn.get(e.from), b = drawn.get(e.to);
    if (!a || !b) return;
    const bold = pathEdges.has([e.from, e.to].sort().join("\u0000"));
    const same = a[1] === b[1];
    const d = same
      ? `M${a[0]},${a[1]} Q${(a[0] + b[0]) / 2},${a[1] - 40} ${b[0]},${b[1]}`
      : `M${a[0]},${a[1]} L${b[0]},${b[1]}`;
    root.append(svg("path", { class: `edge ${cls}${bold ? " bold" : ""}`, d,
      "data-from": e.from, "data-to": e.to }));
    const mx = (a[0] + b[0]) / 2 + 4, my = (a[1] + b[1]) / 2 - (same ? 20 : 2);
    const label = e.dropped ? `hub (${e.events_total})` : String(e.events_total);
    root.append(svg("text", { class: "edge-label", x: mx, y: my, text: label }));
  };
  for (const e of x.identity.edges) edge(e, "");
  for (const e of x.identity.links_out) edge(e, "out");
  for (const [id, [cx, cy]] of drawn) {
    const other = others.some((o) => o.id === id);
    const classes = ["node", other ? "other" : "", hubs.has(id) ? "hub" : "",
      id === x.profile ? "root" : ""].filter(Boolean).join(" ");
    const short = id.length > 28 ? `${id.slice(0, 27)}…` : id;
    const g = svg("g", { class: classes, "data-id": id },
      svg("title", { text: other ? `${id} (profile ${(others.find((o) => o.id === id) || {}).profile || "?"})` : id }),
      svg("circle", { cx, cy, r: 8, fill: other ? null : colourOf(typeOf(id)) }),
      svg("text", { x: cx, y: cy + 22, "text-anchor": "middle", text: short }));
    if (other) {
      const link = svg("a", { href: `#/profile/${encodeURIComponent(id)}` });
      link.append(g);
      root.append(link);
    } else {
      root.append(g);
    }
  }
  for (const s of summaries) {
    root.append(svg("g", { class: "summary" },
      svg("rect", { x: s.x - 70, y: s.y - 14, width: 150, height: 28, rx: 6 }),
      svg("text", { x: s.x + 5, y: s.y + 4, "text-anchor": "middle", text: s.text })));
  }
  return root;
}

// Erasure (SPEC section 6) behind the write key: a `forget` naming this profile's root
// identifier at the path the spec reads that type from.
function erasure(x) {
  const key = el("input", { type: "password", placeholder: "write key", id: "write-key", autocomplete: "off" });
  const result = el("span", { id: "erase-result", class: "quiet" });
  const button = el("button", { class: "danger", id: "erase", type: "submit", text: "Erase this customer" });
  const form = el("form", { class: "toolbar", onsubmit: async (event) => {
    event.preventDefault();
    const type = typeOf(x.profile);
    const spec = (stats && stats.identifiers || []).find((t) => t.name === type);
    if (!spec || !spec.path) { result.textContent = `no path reads ${type} identifiers`; return; }
    if (!confirm(`Erase every event of ${x.profile}? This cannot be undone.`)) return;
    const forget = { type: "forget", timestamp: new Date().toISOString() };
    let at = forget;
    spec.path.forEach((segment, i) => {
      if (i === spec.path.length - 1) at[segment] = x.profile.slice(type.length + 1);
      else at = at[segment] = at[segment] || {};
    });
    button.disabled = true;
    const headers = { "Content-Type": "application/json" };
    if (key.value) headers.Authorization = `Basic ${btoa(`${key.value}:`)}`;
    try {
      const response = await fetch("/v1/forget", { method: "POST", headers, body: JSON.stringify(forget) });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error(body.error || `status ${response.status}`);
      result.className = "yes";
      result.textContent = "Erasure acknowledged (logged durably); checking…";
      // the engine carries it out within moments: look until the profile is gone
      for (let i = 0; i < 20; i++) {
        await new Promise((done) => setTimeout(done, 250));
        const after = await getJSON(`/v1/profiles/${encodeURIComponent(x.profile)}/explain`);
        if (after.status === 404 || after.body.status === "suppressed") {
          result.textContent = `Erased: no profile holds ${x.profile} now.`;
          return;
        }
      }
      result.textContent = "Acknowledged; the engine has not carried it out yet (reload to check).";
    } catch (e) {
      result.className = "error";
      result.textContent = `Not erased: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  } }, key, button, result);
  return el("div", {}, el("h2", { text: "Erasure" }), form);
}

// ---- a new view --------------------------------------------------------------------------

// Write a view (its purpose, conditions and fields), see how many rows it would have now and
// the first of them (a dry run over the current state: POST /v1/views/NAME/preview), save it
// (PUT /v1/views/NAME) and watch it fill (the live view page). The definition goes as JSON;
// the server checks it as `throughline check` checks a file and says what is wrong.
async function editorPage() {
  const mine = generation;
  if (!stats) await refreshStats().catch(() => {});
  if (mine !== generation) return;
  const option = (value, text) => el("option", { value, text });
  const key = el("input", { type: "password", placeholder: "write key", id: "editor-key", autocomplete: "off" });
  const name = el("input", { id: "editor-name", placeholder: "name: letters, digits, _ or -", autocomplete: "off" });
  const purpose = el("select", { id: "editor-purpose" }, option("", "internal (no purpose)"),
    ...((stats && stats.purposes) || []).map((p) => option(p, `purpose: ${p}`)));
  const score = el("input", { id: "editor-score", type: "number", step: "any", placeholder: "score at least (optional)" });
  const signal = el("select", { id: "editor-signal" }, option("", "any signals"),
    ...((stats && stats.signals) || []).map((s) => option(s, `has signal: ${s}`)));
  const wherePath = el("input", { id: "editor-where-path", placeholder: "where: a trait path, e.g. traits.plan (optional)" });
  const whereTest = el("select", { id: "editor-where-test" },
    option("exists", "exists"), option("equals", "equals"), option("prefix", "starts with"));
  const whereValue = el("input", { id: "editor-where-value", placeholder: "value" });
  const fields = ["score", "signals", ...((stats && stats.identifiers) || []).map((t) => t.name)];
  const boxes = fields.map((f) => {
    const box = el("input", { type: "checkbox", id: `editor-field-${f}`, value: f });
    return { f, box, label: el("label", {}, box, ` ${f}`) };
  });
  const traits = el("input", { id: "editor-traits", placeholder: "trait fields, e.g. traits.plan, traits.company.name" });
  const result = el("div", { id: "editor-result", class: "quiet" });

  function definition() {
    const d = {};
    if (purpose.value) d.purpose = purpose.value; else d.internal = true;
    if (score.value !== "") d.score_gte = Number(score.value);
    if (signal.value) d.has_signal = signal.value;
    const path = wherePath.value.trim();
    if (path) {
      const p = { path };
      const text = whereValue.value;
      if (whereTest.value === "exists") p.exists = true;
      else if (whereTest.value === "prefix") p.prefix = text;
      else { try { p.equals = JSON.parse(text); } catch (_) { p.equals = text; } }
      d.where = [p];
    }
    d.fields = boxes.filter((b) => b.box.checked).map((b) => b.f)
      .concat(traits.value.split(",").map((t) => t.trim()).filter((t) => t));
    return d;
  }

  async function send(method, path) {
    const headers = { "Content-Type": "application/json" };
    if (key.value) headers.Authorization = `Basic ${btoa(`${key.value}:`)}`;
    const response = await fetch(path, { method, headers, body: JSON.stringify(definition()) });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.error || `status ${response.status}`);
    return body;
  }

  const path = (suffix) => `/v1/views/${encodeURIComponent(name.value.trim())}${suffix}`;
  const preview = el("button", { type: "button", id: "editor-preview", onclick: async () => {
    result.className = "quiet";
    result.textContent = "Computing over the current state…";
    try {
      const answer = await send("POST", path("/preview"));
      const columns = [];
      for (const r of answer.first) for (const c of Object.keys(r.row)) if (!columns.includes(c)) columns.push(c);
      result.className = "";
      result.replaceChildren(
        el("p", { id: "editor-count", text: `${fmtNumber(answer.rows)} ${answer.rows === 1 ? "row" : "rows"} now` +
          (answer.rows > answer.first.length ? `; the first ${answer.first.length}:` : "") }),
        el("table", { id: "editor-rows" },
          el("tr", {}, el("th", { text: "key" }), ...columns.map((c) => el("th", { text: c }))),
          ...answer.first.map((r) => el("tr", { "data-key": r.key }, el("td", { text: r.key }),
            ...columns.map((c) => el("td", { text: value(r.row[c]) }))))));
    } catch (e) {
      result.className = "error";
      result.textContent = e.message;
    }
  } }, "Preview");
  const save = el("button", { type: "button", id: "editor-save", onclick: async () => {
    try {
      const answer = await send("PUT", path(""));
      result.className = "yes";
      result.textContent = `Saved (version ${answer.version}, ${fmtNumber(answer.rows)} rows).`;
      location.hash = `#/view/${encodeURIComponent(answer.view)}`;
    } catch (e) {
      result.className = "error";
      result.textContent = e.message;
    }
  } }, "Save");
  main.replaceChildren(
    el("h1", { text: "New view" }),
    el("p", { class: "quiet", text: "A view over what the server already holds: its rows are there as soon as it is saved, then kept up to date like every view. Saving a name that exists replaces that view." }),
    el("form", { id: "editor", onsubmit: (event) => event.preventDefault() },
      el("div", { class: "toolbar" }, name, purpose),
      el("div", { class: "toolbar" }, score, signal),
      el("div", { class: "toolbar" }, wherePath, whereTest, whereValue),
      el("div", { class: "toolbar", id: "editor-fields" }, el("span", { text: "fields:" }), ...boxes.map((b) => b.label), traits),
      el("div", { class: "toolbar" }, key, preview, save)),
    result);
}

// ---- routing -----------------------------------------------------------------------------

function route() {
  generation += 1;
  leave();
  leave = () => {};
  const hash = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  if (hash.startsWith("/view/")) leave = viewPage(hash.slice(6));
  else if (hash.startsWith("/profile/")) profilePage(hash.slice(9));
  else if (hash === "/new-view") editorPage();
  else leave = overview();
  refreshStats().catch(() => {});
}

document.getElementById("search").onsubmit = (event) => {
  event.preventDefault();
  const id = document.getElementById("search-box").value.trim();
  if (id) location.hash = `#/profile/${encodeURIComponent(id)}`;
};
window.addEventListener("hashchange", route);
route();
