// fep-ha dashboard: polls the JSON API of this node every 2 s and renders plain tables.
// No build step, no library. A token (needed when reads are closed, and for the handover) is kept in
// sessionStorage and sent as "Authorization: Bearer <token>".
"use strict";

const PERIOD_MS = 2000;
const $ = (sel) => document.querySelector(sel);

function token() { return sessionStorage.getItem("fep-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
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

function fill(tableId, rows) {
  const tbody = $("#" + tableId + " tbody");
  tbody.replaceChildren(...rows);
}

function time(ms) {
  if (ms === null || ms === undefined) return "";
  return new Date(ms).toLocaleTimeString();
}

function flag(v, yes = "up", no = "down") {
  if (v === null || v === undefined) return el("td", "?", "muted");
  return el("td", v ? yes : no, v ? "ok" : "bad");
}

function hbCell(hb) {
  if (!hb) return el("td", "?", "muted");
  const td = el("td", hb.alive ? "alive" : "dead", hb.alive ? "ok" : "bad");
  td.title = hb.detail;
  return td;
}

function channelsCell(cs) {
  if (!cs || !cs.reported) return el("td", "no report", "muted");
  const parts = cs.channels.map((c) => {
    const mark = c.connected === null ? "?" : (c.connected ? "up" : "down");
    const act = cs.active === c.no ? "*" : "";
    return act + "ch" + c.no + " " + mark + (c.switches ? " (" + c.switches + " sw)" : "");
  });
  const anyUp = cs.channels.some((c) => c.connected);
  const td = el("td", parts.join(", "), anyUp ? "ok" : "bad");
  td.title = cs.channels.map((c) => "ch" + c.no + " " + c.host + ":" + c.port + (c.error ? ": " + c.error : "")).join("\n");
  return td;
}

function renderNode(node) {
  $("#node-id").textContent = "node " + node.node;
  document.title = "fep-ha node " + node.node;
  const byNode = {};
  for (const hb of node.heartbeats) (byNode[hb.node] = byNode[hb.node] || {})[hb.service] = hb;
  const rows = ["A", "B"].map((n) => {
    const redis = n === node.node
      ? (node.redis.role === "master" ? "master (local)" : "replica of " + node.redis.master + " (" + (node.redis.link_status || "?") + ")")
      : "";
    return row([el("td", n + (n === node.node ? " (this node)" : ""), "holder"), hbCell((byNode[n] || {}).acquirer),
                hbCell((byNode[n] || {}).forwarder), redis], { "data-node": n });
  });
  fill("nodes", rows);
  $("#cfg").textContent = "Configuration generation " + node.cfg.gen +
    (node.cfg.loaded_at_ms ? ", loaded " + new Date(node.cfg.loaded_at_ms).toLocaleString() : "");
}

function leaseText(l) {
  if (!l || !l.holder) return "no holder";
  if (l.lapsed) return "lapsed";
  let s = "expires in " + Math.max(0, Math.round(l.remaining_ms / 100) / 10) + " s";
  if (l.handover) s += ", handover to " + l.handover + " pending";
  return s;
}

function renderRtus(list) {
  const acq = [], fwd = [];
  for (const r of list.items) {
    if (r.type === "acquisition") {
      const l = r.lease || {};
      const holder = el("td", l.holder || "none", "holder " + (l.holder && !l.lapsed ? "ok" : "bad"));
      const btn = el("button", l.holder ? "Move to " + (l.holder === "A" ? "B" : "A") : "Move");
      btn.disabled = !l.holder;
      btn.addEventListener("click", () => handover(r.id, l.holder));
      const act = el("td"); act.appendChild(btn);
      const cs = {}; for (const c of r.channel_state || []) cs[c.node] = c;
      acq.push(row([r.id, r.name, holder, l.epoch, leaseText(l), channelsCell(cs.A), channelsCell(cs.B),
                    flag(r.link && r.link.vala), flag(r.link && r.link.valb), act],
                   { "data-rtu": r.id, "data-holder": l.holder || "" }));
    } else {
      const masters = (n) => (r.clients || []).filter((c) => c.node === n).map((c) => c.peer).join(", ") || "none";
      fwd.push(row([r.id, r.name, r.protocol, r.listen_port, masters("A"), masters("B")], { "data-rtu": r.id }));
    }
  }
  fill("acq", acq);
  fill("fwd", fwd);
}

function renderVps(list) {
  fill("vps", list.items.map((v) => row([v.id, v.name, v.rtu, flag(v.vala), flag(v.valb), flag(v.val),
                                         time(v.since_ms)], { "data-vp": v.id })));
}

function renderControls(page) {
  fill("controls", page.items.map((c) => row([c.id, c.rtu, c.point, c.value,
    el("td", c.state, c.state === "done" ? "ok" : "bad"), c.result, c.executor, c.origin, time(c.finished_ms)])));
}

async function handover(rtu, holder) {
  const target = holder === "A" ? "B" : "A";
  if (!token()) {
    showAuth("The handover needs the API token.");
    return;
  }
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
}

$("#auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("fep-token", $("#token").value);
  $("#auth").classList.add("hidden");
  refresh();
});

let timer = null;
async function refresh() {
  clearTimeout(timer);
  try {
    const [node, rtus, vps, ctls] = await Promise.all([
      api("/api/v1/node"), api("/api/v1/rtus"), api("/api/v1/virtual-points"), api("/api/v1/controls?limit=10")]);
    renderNode(node);
    renderRtus(rtus);
    renderVps(vps);
    renderControls(ctls);
    $("#error").classList.add("hidden");
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.setAttribute("data-rendered", "1");
  } catch (e) {
    $("#error").textContent = e.message;
    $("#error").classList.remove("hidden");
    if (e.status === 401 || e.status === 403) showAuth(e.message);
  }
  timer = setTimeout(refresh, PERIOD_MS);
}

refresh();
