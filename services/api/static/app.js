// fep-ha dashboard. Loads a snapshot from the JSON API, then follows /api/v1/stream (server-sent events,
// read with fetch so the token header can be sent): value changes of the RTU on screen, new timeline
// events, node health. When the stream is refused (503: client limit) or broken, it polls every 2 s and
// retries the stream. No build step, no library. The token (needed when reads are closed, and for the
// handover) is kept in sessionStorage and sent as "Authorization: Bearer <token>".
// States are written as text and symbols, never as colour alone.
"use strict";

const PERIOD_MS = 2000;
const TREND_S = 300;
const TREND_MAX = 600;
const EVENTS_PAGE = 50;
const SILENT_MS = 5000;  // health comes every second: a stream this long without a byte is dead or hung
const $ = (sel) => document.querySelector(sel);

const S = {
  offset: 0,            // server clock minus browser clock (ms), from the last page or health message
  rtus: [],             // /api/v1/rtus items
  points: new Map(),    // point id -> point (current values of the RTU on screen)
  trends: new Map(),    // point id -> [[ts_ms, value, quality], ...]
  vps: new Map(),       // virtual point id -> row data
  live: false,
  everLive: false,      // the stream worked once: retry it quickly when it breaks
  evOldest: null,
  evIds: new Set(),
  nt: "",               // the RTUs whose values are served NT (values_nt), as of the values on screen
};

// NT (not topical) is the api's verdict on stored values (a frozen or dead holder writes nothing), so the
// change stream never says it: when the set of RTUs served NT changes, the values on screen are reloaded.
function ntKey(rtus) { return rtus.items.filter((r) => r.values_nt).map((r) => r.id).join(","); }

function token() { return sessionStorage.getItem("fep-token") || ""; }
function authHeaders() { return token() ? { "Authorization": "Bearer " + token() } : {}; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, authHeaders());
  const res = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.detail) ? String(body.detail) : res.status + " " + res.statusText);
    err.status = res.status;
    throw err;
  }
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function fill(tableId, rows) { $("#" + tableId + " tbody").replaceChildren(...rows); }
function time(ms) { return (ms === null || ms === undefined) ? "" : new Date(ms).toLocaleTimeString(); }
function now() { return Date.now() + S.offset; }

function age(ms) {
  if (ms === null || ms === undefined) return "";
  const s = (now() - ms) / 1000;
  if (s < -1) return "? ahead of this node's clock";  // the source's clock differs from this node's
  if (s < 60) return s.toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d";
}

function flag(v, yes = "up", no = "down") {
  if (v === null || v === undefined) return el("td", "? unknown", "muted");
  return el("td", v ? "✓ " + yes : "✗ " + no, v ? "ok" : "bad");
}

function hbCell(hb) {
  if (!hb) return el("td", "? unknown", "muted");
  // alive null: a replica cut off from the master cannot see heartbeats (detail says why)
  const td = hb.alive === null ? el("td", "? unknown", "muted")
    : el("td", hb.alive ? "✓ alive" : "✗ dead", hb.alive ? "ok" : "bad");
  td.title = hb.detail;
  return td;
}

// --- health at a glance -------------------------------------------------------------------------------

function renderOverview(o) {
  S.offset = o.time_ms - Date.now();
  $("#node-id").textContent = "node " + o.node;
  document.title = "fep-ha node " + o.node;
  const rep = o.replication;
  fill("nodes", o.nodes.map((n) => {
    const redis = n.master === null ? el("td", "? unknown", "muted")
      : el("td", n.master ? "★ master" : "replica", n.master ? "holder" : "");
    return row([el("td", n.node + (n.this ? " (this node)" : ""), "holder"), redis, hbCell(n.acquirer),
                hbCell(n.forwarder)], { "data-node": n.node, "data-master": n.master ? "1" : "0" });
  }));
  $("#g-master").textContent = o.master_node ? "node " + o.master_node : "? unknown (" + (o.master_detail || "replication link down") + ")";
  const up = rep.link_status === "up";
  let link = (up ? "✓ up" : "✗ " + (rep.link_status || "unknown"));
  if (rep.down_s !== null && rep.down_s !== undefined) link += " for " + rep.down_s + " s";
  if (rep.lag_s !== null && rep.lag_s !== undefined) link += ", lag " + rep.lag_s + " s";
  if (rep.lag_bytes !== null && rep.lag_bytes !== undefined) link += ", " + rep.lag_bytes + " bytes behind";
  if (rep.role === "master") link += rep.replicas.length ? " (replica " + rep.replicas.join(", ") + ")" : " (no replica)";
  else link += " (this node replicates " + (rep.master || "?") + ")";
  $("#g-link").textContent = link;
  $("#g-link").className = up ? "ok" : "bad";
  $("#g-failover").textContent = o.last_failover
    ? new Date(o.last_failover.ts_ms).toLocaleString() + ": " + o.last_failover.text : "none recorded";
  $("#g-cfg").textContent = o.cfg.gen
    ? "generation " + o.cfg.gen + ", " + (o.cfg.loaded_at_ms ? new Date(o.cfg.loaded_at_ms).toLocaleString() : "?") +
      " from " + (o.cfg.source || "?") : "✗ no configuration loaded";
}

// --- RTUs (lease, channels, links, forwarding masters) ------------------------------------------------

function channelsCell(cs) {
  if (!cs || !cs.reported) return el("td", "? no report", "muted");
  if (cs.not_current) {  // its acquirer is not alive, or this node's Redis is cut off: the last report is not current
    const td = el("td", "? not current", "muted");
    td.title = cs.not_current;
    return td;
  }
  // the channel in use is up or down; the other one is only connected when switched to: "standby", its
  // last error said on screen (a channel lost on one node while the other channel is in use)
  const parts = cs.channels.map((c) => {
    const act = cs.active === c.no;
    const mark = c.connected === null ? "?" : (c.connected ? "up" : (act ? "down" : "standby"));
    const e = c.error && !c.connected ? (c.error.length > 60 ? c.error.slice(0, 57) + "…" : c.error) : "";
    const err = !e ? "" : (act ? ": " + e : " (last error: " + e + ")");
    return (act ? "*" : "") + "ch" + c.no + " " + mark + err + (c.switches ? " (" + c.switches + " sw)" : "");
  });
  const anyUp = cs.channels.some((c) => c.connected);
  const td = el("td", (anyUp ? "✓ " : "✗ ") + parts.join(", "), anyUp ? "ok" : "bad");
  td.title = cs.channels.map((c) => "ch" + c.no + " " + c.host + ":" + c.port + (c.error ? ": " + c.error : "")).join("\n");
  return td;
}

function leaseText(l) {
  if (!l || !l.holder) return "no holder";
  if (l.not_current) return "? unknown: " + l.not_current;
  if (l.lapsed) return "✗ lapsed";
  let s = "expires in " + Math.max(0, Math.round(l.remaining_ms / 100) / 10) + " s";
  if (l.handover) s += ", handover to " + l.handover + " pending";
  return s;
}

// How the holder reaches its device, and whether the other node takes over (lease.reach, reach_detail)
function reachCell(l) {
  if (!l || !l.reach) return el("td", "", "muted");  // no holder, lapsed or not current: the lease cell says it
  if (l.reach === "full") return el("td", "✓ fully", "ok");
  const other = l.holder === "A" ? "B" : "A";
  let text = l.reach === "partial" ? "⚠ in part only" : "✗ not reached";
  if (l.takeover_in_ms !== null && l.takeover_in_ms !== undefined) {
    text += l.takeover_in_ms > 0 ? ", " + other + " may take over in " + (l.takeover_in_ms / 1000).toFixed(1) + " s"
      : ", " + other + " takes over when it reaches it" + (l.reach === "partial" ? " fully" : "");
  } else text += ", no takeover";
  const td = el("td", text, l.reach === "partial" ? "warn" : "bad");
  td.title = (l.reach_detail || "") + (l.timers_from === "api"
    ? " (by the api's own [timers]: no acquirer reports its timers)" : "");
  return td;
}

function renderRtus(list) {
  S.rtus = list.items;
  const acq = [], fwd = [];
  for (const r of list.items) {
    if (r.type === "acquisition") {
      const l = r.lease || {};
      const holder = l.not_current ? el("td", "? " + l.holder + " (last known)", "muted")
        : el("td", l.holder ? (l.lapsed ? "✗ " : "") + l.holder : "✗ none", "holder " + (l.holder && !l.lapsed ? "ok" : "bad"));
      const btn = el("button", l.holder ? "Move to " + (l.holder === "A" ? "B" : "A") : "Move");
      btn.type = "button";
      btn.disabled = !l.holder;
      btn.setAttribute("aria-label", "Move the lease of RTU " + r.id + " to the other node");
      btn.addEventListener("click", () => handover(r.id, l.holder));
      const act = el("td"); act.appendChild(btn);
      const cs = {}; for (const c of r.channel_state || []) cs[c.node] = c;
      acq.push(row([r.id, r.name, holder, l.epoch, leaseText(l), reachCell(l), channelsCell(cs.A), channelsCell(cs.B),
                    flag(r.link && r.link.vala), flag(r.link && r.link.valb), act],
                   { "data-rtu": r.id, "data-holder": l.holder || "" }));
    } else {
      const masters = (n) => (r.clients || []).filter((c) => c.node === n).map((c) => c.peer).join(", ") || "none";
      fwd.push(row([r.id, r.name, r.protocol, r.listen_port, masters("A"), masters("B")], { "data-rtu": r.id }));
    }
  }
  fill("acq", acq);
  fill("fwd", fwd);
  fillRtuSelects();
  renderWhy();
}

// Above the values: why the selected RTU's values are not current (values_nt: NT, as SCADA is served them)
// and why some or all of them are invalid (the holder reaches the device in part or not at all)
function renderWhy() {
  const r = selectedRtu();
  const lines = [];
  if (r && r.type === "acquisition") {
    const l = r.lease || {};
    if (r.values_nt) lines.push(["stale", "⚠ STALE (NT): SCADA is served these values as not topical: " + r.values_nt
      + (r.limits_from === "api" ? " (by the api's own limits: this node's forwarder reports none)" : ""), "warn"]);
    if (l.reach === "partial" || l.reach === "none") lines.push(["reach", "✗ " + l.reach_detail, l.reach === "none" ? "bad" : "warn"]);
    const cs = (r.channel_state || []).filter((c) => c.node === l.holder)[0];
    if (l.reach === "none" && cs && !cs.not_current) {
      const errs = cs.channels.filter((c) => c.error).map((c) => "ch" + c.no + ": " + c.error);
      if (errs.length) lines.push(["channels", "✗ node " + l.holder + "'s channels: " + errs.join("; "), "bad"]);
    }
  }
  const box = $("#v-why");
  const sig = JSON.stringify(lines.map((x) => x[1]));
  if (box.dataset.sig === sig) return;
  box.dataset.sig = sig;
  box.replaceChildren(...lines.map(([k, text, cls]) => { const p = el("p", text, cls); p.dataset.why = k; return p; }));
  scheduleValues();  // the quality cells' titles say the same
}

function fillRtuSelects() {
  const want = S.rtus.map((r) => r.id + " " + r.name + " (" + r.type + ")").join("|");
  const sel = $("#v-rtu");
  if (sel.dataset.sig === want) return;
  sel.dataset.sig = want;
  const keep = sel.value, keepT = $("#t-rtu").value;
  sel.replaceChildren(...S.rtus.map((r) => {
    const o = el("option", r.id + " " + r.name + (r.type === "forwarding" ? " (forwarding)" : ""));
    o.value = r.id; return o;
  }));
  const t = $("#t-rtu");
  t.replaceChildren(el("option", "all"), ...S.rtus.map((r) => { const o = el("option", r.id + " " + r.name); o.value = r.id; return o; }));
  t.firstChild.value = "";
  if (keep && S.rtus.some((r) => String(r.id) === keep)) sel.value = keep;
  t.value = keepT;
}

function selectedRtu() {
  const id = $("#v-rtu").value;
  return S.rtus.find((r) => String(r.id) === id) || null;
}

// --- values ------------------------------------------------------------------------------------------

function qualityCell(p) {
  const flags = p.quality_flags || [];
  let text, cls, state;
  if (p.error) { text = "✗ unreadable record"; cls = "bad"; state = "error"; }
  else if (p.quality === null || p.quality === undefined) { text = "? no value yet"; cls = "muted"; state = "none"; }
  else if (flags.includes("IV")) { text = "✗ INVALID"; cls = "bad"; state = "invalid"; }
  else if (flags.includes("NT")) { text = "⚠ STALE"; cls = "warn"; state = "stale"; }
  else if (flags.length) { text = "⚑ " + flags.join(" "); cls = "warn"; state = "flagged"; }
  else { text = "✓ good"; cls = "ok"; state = "good"; }
  if (flags.length && state !== "flagged") text += " (" + flags.join(" ") + ")";
  const td = el("td", text, cls);
  td.title = "quality byte " + p.quality + (flags.length ? ": " + flags.join(", ") : "");
  const r = selectedRtu();  // why, when the RTU says it (the box above the values says it too)
  if (state === "stale" && r && r.values_nt) td.title += "\nnot topical: " + r.values_nt;
  if (state === "invalid" && r && r.lease && r.lease.reach_detail) td.title += "\n" + r.lease.reach_detail;
  return [td, state];
}

function fmtValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number" && !Number.isInteger(v)) return (Math.round(v * 1000) / 1000).toString();
  return String(v);
}

function qualityMatches(p, want) {
  if (!want) return true;
  const good = p.quality === 0 && !p.error;
  if (want === "good") return good;
  if (want === "bad") return !good;
  return (p.quality_flags || []).includes(want);
}

function sparkline(series) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", "140"); svg.setAttribute("height", "28"); svg.setAttribute("class", "trend");
  const pts = (series || []).filter((s) => typeof s[1] === "number");
  svg.setAttribute("role", "img");
  if (pts.length < 1) { svg.setAttribute("aria-label", "no trend yet"); svg.dataset.points = "0"; return svg; }
  // the window: the last TREND_S, or from the first sample when there is less history (at least 30 s)
  const t1 = now(), t0 = Math.max(t1 - TREND_S * 1000, Math.min(pts[0][0], t1 - 30000));
  let lo = Math.min(...pts.map((s) => s[1])), hi = Math.max(...pts.map((s) => s[1]));
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => 2 + 136 * Math.max(0, (t - t0)) / (t1 - t0);
  const y = (v) => 26 - 24 * (v - lo) / (hi - lo);
  let d = "", prev = null;
  for (const s of pts) {  // step line: a value holds until the next change
    if (prev !== null) d += " " + x(s[0]).toFixed(1) + "," + y(prev).toFixed(1);
    d += " " + x(s[0]).toFixed(1) + "," + y(s[1]).toFixed(1);
    prev = s[1];
  }
  d += " " + x(t1).toFixed(1) + "," + y(prev).toFixed(1);
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", d.trim());
  svg.appendChild(line);
  for (const s of pts) if (s[2] & 0x80) {  // invalid samples marked with a cross, not only a colour
    const m = document.createElementNS(NS, "text");
    m.setAttribute("x", x(s[0]).toFixed(1)); m.setAttribute("y", "26"); m.textContent = "×";
    svg.appendChild(m);
  }
  svg.dataset.points = String(pts.length);
  svg.setAttribute("aria-label", "trend of the last " + TREND_S / 60 + " min: " + pts.length +
                   " samples, from " + fmtValue(lo) + " to " + fmtValue(hi));
  return svg;
}

function pointRow(p) {
  const [qtd, state] = qualityCell(p);
  const value = el("td", fmtValue(p.value), "num" + (state === "invalid" ? " invalid" : ""));
  const trend = el("td");
  if (p.kind === "AI") trend.appendChild(sparkline(S.trends.get(p.id)));
  return row([p.id, p.name, p.kind, value, qtd, el("td", time(p.ts_ms)), el("td", age(p.ts_ms), "age"), trend],
             { "data-point": p.id, "data-quality": state, "data-ts": p.ts_ms === null || p.ts_ms === undefined ? "" : p.ts_ms });
}

function forwardRow(f) {
  const [qtd, state] = qualityCell(f);
  return row([f.id, f.table, f.address, f.src + " " + (f.src_name || "? not configured"),
              el("td", fmtValue(f.value), "num"), qtd, el("td", time(f.ts_ms)), el("td", age(f.ts_ms), "age")],
             { "data-point": f.src, "data-quality": state, "data-ts": f.ts_ms === null || f.ts_ms === undefined ? "" : f.ts_ms });
}

const POINT_HEAD = ["Point", "Name", "Kind", "Value", "Quality", "Source time", "Age", "Trend (5 min)"];
const FWD_HEAD = ["ZFID", "Table", "Address", "Source point", "Value", "Quality", "Source time", "Age"];

function renderValues() {
  const r = selectedRtu();
  const kind = $("#v-kind").value, q = $("#v-quality").value;
  const fwd = r && r.type === "forwarding";
  const head = fwd ? FWD_HEAD : POINT_HEAD;
  const thead = $("#points thead");
  if (thead.dataset.kind !== (fwd ? "fwd" : "acq")) {
    thead.dataset.kind = fwd ? "fwd" : "acq";
    const tr = document.createElement("tr");
    for (const h of head) { const th = el("th", h); th.scope = "col"; tr.appendChild(th); }
    thead.replaceChildren(tr);
  }
  const items = [...S.points.values()].filter((p) => (!kind || p.kind === kind) && qualityMatches(p, q));
  fill("points", items.map(fwd ? forwardRow : pointRow));
  $("#v-count").textContent = items.length + " of " + S.points.size + " points";
}

async function loadValues() {
  const r = selectedRtu();
  S.points = new Map();
  if (!r) { renderValues(); return; }
  if (r.type === "forwarding") {
    const list = await api("/api/v1/rtus/" + r.id + "/forwards");
    S.offset = list.time_ms - Date.now();
    // a ZFID is unique within its table only (T005 1 and T006 1): keyed by the id alone, a forwarding RTU's
    // points of one table hid those of another with the same id (RTU 10: 5 rows of its 12)
    for (const f of list.items) S.points.set(f.table + ":" + f.id, f);
  } else {
    const [page, trends] = await Promise.all([
      api("/api/v1/points?limit=1000&rtu=" + r.id), api("/api/v1/trends?seconds=" + TREND_S + "&rtu=" + r.id)]);
    S.offset = page.time_ms - Date.now();
    for (const p of page.items) S.points.set(p.id, p);
    S.trends = new Map(trends.series.map((s) => [s.id, s.samples.map((x) => [x.ts_ms, x.value, x.quality])]));
  }
  renderValues();
}

function applyValues(msg) {
  const r = selectedRtu();
  if (msg.rtu === "vp") { applyVps(msg.items); }
  if (!r) return;
  const fwd = r.type === "forwarding";
  if (!fwd && String(r.id) !== msg.rtu) return;
  for (const it of msg.items) {
    if (fwd) {
      // the item's id is the source point's: the forwarding point keeps its own (its ZFID was replaced)
      const { id, ...v } = it;
      for (const f of S.points.values()) if (f.src === id) Object.assign(f, v);
      continue;
    }
    const p = S.points.get(it.id);
    if (!p) continue;
    Object.assign(p, it);
    if (p.kind === "AI" && typeof it.value === "number") {
      const s = S.trends.get(it.id) || [];
      s.push([it.ts_ms, it.value, it.quality]);
      const cut = now() - TREND_S * 1000;
      while (s.length && (s.length > TREND_MAX || s[0][0] < cut)) s.shift();
      S.trends.set(it.id, s);
    }
  }
  scheduleValues();
}

let valuesPending = false;
function scheduleValues() {  // at most one re-render per animation frame, however many changes arrive
  if (valuesPending) return;
  valuesPending = true;
  requestAnimationFrame(() => { valuesPending = false; renderValues(); });
  setTimeout(() => { if (valuesPending) { valuesPending = false; renderValues(); } }, 250);  // hidden tab
}

// --- virtual points, controls ------------------------------------------------------------------------

function renderVps() {
  fill("vps", [...S.vps.values()].map((v) => {
    const tr = row([v.id, v.name, v.rtu, flag(v.vala), flag(v.valb), flag(v.val), time(v.since_ms)], { "data-vp": v.id });
    if (v.not_current) tr.title = "not current: " + v.not_current;
    return tr;
  }));
}

// A virtual point is its RTU's link state: every health message (/rtus) brings the links, so the table
// follows them, "? unknown" as soon as they are not current (a replica cut off from the master), where the
// value changes of the stream alone left the last state looking current.
function linkVps(rtus) {
  const links = new Map(rtus.items.filter((r) => r.link).map((r) => [r.id, r.link]));
  let changed = false;
  for (const v of S.vps.values()) {
    const l = links.get(v.rtu);
    if (!l || (v.vala === l.vala && v.valb === l.valb && v.val === l.val && v.not_current === l.not_current)) continue;
    Object.assign(v, { vala: l.vala, valb: l.valb, val: l.val, since_ms: l.since_ms, not_current: l.not_current });
    changed = true;
  }
  if (changed) renderVps();
}

function applyVps(items) {
  let changed = false;
  for (const it of items) {
    const v = S.vps.get(it.id);
    if (v && typeof it.value === "number") { v.val = it.value !== 0; v.since_ms = it.ts_ms; changed = true; }
  }
  if (changed) renderVps();
}

function renderControls(page) {
  fill("controls", page.items.map((c) => row([c.id, c.rtu, c.point, c.value,
    el("td", (c.state === "done" ? "✓ " : "✗ ") + c.state, c.state === "done" ? "ok" : "bad"), c.result, c.executor, c.origin, time(c.finished_ms)])));
}

// --- timeline ----------------------------------------------------------------------------------------

const KIND_MARK = { lease: "⇄", channel: "↔", link: "⚡", config: "⚙", control: "▶", role: "★", master: "☎" };

function eventRow(e) {
  const bad = (e.kind === "link" && e.fields.up === "0") || (e.kind === "master" && e.fields.state === "disconnected") ||
              (e.kind === "control" && e.fields.state !== "done") || (e.kind === "lease" && e.fields.reason !== "initial" && e.fields.reason !== "handover");
  const tr = row([el("td", e.ts_ms ? new Date(e.ts_ms).toLocaleTimeString() : "?"),
                  el("td", (KIND_MARK[e.kind] || "") + " " + e.kind), e.node || "", el("td", e.text, bad ? "bad" : "")],
                 { "data-event": e.id, "data-kind": e.kind });
  tr.title = e.time || "";
  return tr;
}

function eventQuery() {
  const k = $("#t-kind").value, r = $("#t-rtu").value;
  return (k ? "&kind=" + k : "") + (r ? "&rtu=" + r : "");
}

async function loadEvents(more) {
  const before = more && S.evOldest ? "&before=" + encodeURIComponent(S.evOldest) : "";
  const page = await api("/api/v1/events?limit=" + EVENTS_PAGE + eventQuery() + before);
  const tbody = $("#events tbody");
  if (!more) { tbody.replaceChildren(); S.evIds = new Set(); }
  for (const e of page.items) {
    if (S.evIds.has(e.id)) continue;
    S.evIds.add(e.id);
    tbody.appendChild(eventRow(e));
  }
  S.evOldest = page.next_before;
  $("#t-more").classList.toggle("hidden", !page.next_before);
}

function addEvent(e) {
  const k = $("#t-kind").value, r = $("#t-rtu").value;
  if ((k && e.kind !== k) || (r && String(e.rtu) !== r) || S.evIds.has(e.id)) return;
  S.evIds.add(e.id);
  const tbody = $("#events tbody");
  const tr = eventRow(e);
  tr.setAttribute("data-arrived-ms", String(Date.now()));  // when it reached the page (tests measure it)
  tbody.insertBefore(tr, tbody.firstChild);
  while (tbody.children.length > 200) tbody.removeChild(tbody.lastChild);
  if (e.kind === "control") api("/api/v1/controls?limit=10").then(renderControls).catch(() => {});
}

// --- operator action ---------------------------------------------------------------------------------

async function handover(rtu, holder) {
  const target = holder === "A" ? "B" : "A";
  if (!token()) { showAuth("The handover needs the API token."); return; }
  if (!confirm("Move the lease of RTU " + rtu + " from node " + holder + " to node " + target + "?")) return;
  try {
    const res = await api("/api/v1/rtus/" + rtu + "/handover", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ target }) });
    $("#action-msg").textContent = "RTU " + rtu + ": " + res.detail;
  } catch (e) {
    $("#action-msg").textContent = "RTU " + rtu + ": " + e.message;
    if (e.status === 401 || e.status === 403) showAuth(e.message);
  }
}

function showAuth(msg) {
  $("#auth").classList.remove("hidden");
  $("#auth-msg").textContent = msg || "";
  $("#token").focus();
}

function showError(e) {
  $("#error").textContent = "✗ " + e.message;
  $("#error").classList.remove("hidden");
  if (e.status === 401 || e.status === 403) showAuth(e.message);
}

// --- snapshot, stream, polling -----------------------------------------------------------------------

async function snapshot() {
  const [o, rtus, vps, ctls] = await Promise.all([api("/api/v1/overview"), api("/api/v1/rtus"),
    api("/api/v1/virtual-points"), api("/api/v1/controls?limit=10")]);
  renderOverview(o);
  renderRtus(rtus);
  S.nt = ntKey(rtus);
  S.vps = new Map(vps.items.map((v) => [v.id, v]));
  renderVps();
  renderControls(ctls);
  await Promise.all([loadValues(), loadEvents(false)]);
  $("#error").classList.add("hidden");
  document.body.setAttribute("data-rendered", "1");
}

function setStatus(text) { $("#status").textContent = text; document.body.dataset.live = S.live ? "1" : "0"; }

let streamAbort = null;
async function stream() {
  if (streamAbort) streamAbort.abort();
  const ctl = new AbortController();
  streamAbort = ctl;
  // An api that hangs, or a connection that dies without a reset (its node lost power), sends nothing and
  // ends nothing: the page would go on saying "live". Silence for SILENT_MS ends the stream.
  let last = Date.now(), silent = false;
  const watch = setInterval(() => {
    if (silent || Date.now() - last <= SILENT_MS) return;
    silent = true;
    ctl.abort();
    S.live = false;  // at once: a handler may be waiting on the same hung api
    setStatus("✗ live stream silent for " + SILENT_MS / 1000 + " s: what is shown may not be current");
  }, 1000);
  try {
    await readStream(ctl, () => { last = Date.now(); });
  } catch (e) {
    if (silent) throw new Error("nothing received for " + SILENT_MS / 1000 + " s");
    throw e;
  } finally {
    clearInterval(watch);
  }
}

async function readStream(ctl, heard) {
  // the RTU on screen decides which values the stream sends: at the first load no RTU was selected yet, and
  // the stream opened for the virtual points only left the values on screen frozen (looking live)
  if (!S.rtus.length) renderRtus(await api("/api/v1/rtus"));
  const r = selectedRtu();
  // values of the RTU on screen and of the virtual points; a forwarding RTU's sources may be anywhere: all
  const q = r && r.type === "forwarding" ? "" : "?rtu=vp" + (r ? "&rtu=" + r.id : "");
  const res = await fetch("/api/v1/stream" + q, { headers: authHeaders(), signal: ctl.signal });
  if (!res.ok) {
    const err = new Error("live stream: " + res.status + " " + res.statusText); err.status = res.status; throw err;
  }
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    heard();
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i); buf = buf.slice(i + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data) await onMessage(event, JSON.parse(data));
    }
  }
}

async function onMessage(event, data) {
  if (event === "hello") {
    await snapshot();
    S.live = true; S.everLive = true;
    setStatus("● live (server-sent events) since " + new Date().toLocaleTimeString());
  } else if (event === "values") applyValues(data);
  else if (event === "timeline") addEvent(data);
  else if (event === "health") {
    renderOverview(data.overview);
    if (data.rtus) {
      renderRtus(data.rtus);
      linkVps(data.rtus);
      const nt = ntKey(data.rtus);
      if (nt !== S.nt) { S.nt = nt; await loadValues(); }
    }
  } else if (event === "overflow" || event === "unavailable") throw new Error(data.detail);
}

let pollTimer = null;
async function poll() {
  clearTimeout(pollTimer);
  try {
    await snapshot();
    setStatus("○ polling every 2 s (live stream unavailable), updated " + new Date().toLocaleTimeString());
  } catch (e) {
    showError(e);
    setStatus("✗ no answer (" + e.message + "): what is shown may not be current; retrying every 2 s");
  }
  pollTimer = setTimeout(poll, PERIOD_MS);
}

async function follow() {
  for (;;) {
    try {
      await stream();
    } catch (e) {
      if (e.name === "AbortError") return;  // a new stream replaced this one
      if (e.status === 401 || e.status === 403) { showError(e); }
      S.live = false;  // what is on screen is no longer followed: never go on saying "live" over it
      setStatus("✗ live stream lost (" + e.message + "): what is shown may not be current; polling");
    }
    S.live = false;
    if (!pollTimer) poll();
    await new Promise((ok) => setTimeout(ok, S.everLive ? 1000 : 10000));
    clearTimeout(pollTimer); pollTimer = null;
  }
}

function restartStream() {
  clearTimeout(pollTimer); pollTimer = null;
  follow();
}

setInterval(() => {  // ages grow between changes
  for (const tr of document.querySelectorAll("#points tbody tr")) {
    const ts = tr.getAttribute("data-ts");
    const cell = tr.querySelector("td.age");
    if (cell) cell.textContent = ts ? age(Number(ts)) : "";
  }
}, 1000);

$("#auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("fep-token", $("#token").value);
  $("#auth").classList.add("hidden");
  restartStream();
});
$("#v-rtu").addEventListener("change", () => { renderWhy(); loadValues().catch(showError); restartStream(); });
$("#v-kind").addEventListener("change", renderValues);
$("#v-quality").addEventListener("change", renderValues);
$("#t-kind").addEventListener("change", () => loadEvents(false).catch(showError));
$("#t-rtu").addEventListener("change", () => loadEvents(false).catch(showError));
$("#t-more").addEventListener("click", () => loadEvents(true).catch(showError));

follow();
