"""The status page a node serves at ``/`` (docstore/monitor.py).

One self-contained HTML document: no CDN, no external file, so it works
on a machine without internet.  It polls ``/cluster`` for the members' HTTP
addresses, each member's ``/status`` every second (a member that does not
answer shows as unreachable), and every few seconds ``/history`` of each
member, charting the one that reaches back furthest (a restarted node's
history starts at its restart): entries committed per second and the leader over
the last five minutes, drawn as inline SVG.  ``#leader`` carries the
leader's id in ``data-id`` (empty when no node leads), for scripts and tests.
"""

from __future__ import annotations

PAGE = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>docstore cluster</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  :root { --fg: #1d2430; --muted: #6b7483; --line: #e3e7ee; --bg: #f7f8fa; }
  body { font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg);
         margin: 0; padding: 20px 28px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .sub { color: var(--muted); margin-bottom: 16px; }
  #leader { font-weight: 600; }
  table { border-collapse: collapse; background: #fff; border: 1px solid var(--line);
          min-width: 720px; }
  th, td { text-align: left; padding: 6px 12px; border-bottom: 1px solid var(--line); }
  th { color: var(--muted); font-weight: 500; font-size: 12px; text-transform: uppercase; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .role { padding: 1px 8px; border-radius: 9px; font-size: 12px; color: #fff; }
  .leader { background: #1f8a4c; } .follower { background: #3b6fd4; }
  .candidate, .pre-candidate { background: #c98a12; } .unreachable { background: #b3261e; }
  .err { color: #b3261e; font-size: 12px; }
  .charts { display: flex; gap: 20px; flex-wrap: wrap; margin-top: 20px; }
  .chart { background: #fff; border: 1px solid var(--line); padding: 10px 12px; }
  .chart h2 { font-size: 13px; margin: 0 0 6px; font-weight: 600; }
  svg text { font: 11px system-ui, sans-serif; fill: var(--muted); }
</style>
</head>
<body>
<h1>docstore cluster</h1>
<div class="sub">leader: <span id="leader" data-id="">(looking)</span>
  &middot; updated <span id="updated">never</span></div>
<table>
  <thead><tr><th>node</th><th>role</th><th>term</th><th>leader</th><th>commit</th>
    <th>applied</th><th>lag</th><th>address</th><th>http</th></tr></thead>
  <tbody id="nodes"></tbody>
</table>
<div class="charts">
  <div class="chart"><h2>entries committed / s <span id="rate-now"></span></h2>
    <svg id="rate" width="420" height="130"></svg></div>
  <div class="chart"><h2>leader <span id="changes"></span></h2>
    <svg id="leaders" width="420" height="130"></svg></div>
</div>
<script>
"use strict";
const POLL_MS = 1000, WINDOW_S = 300, W = 420, H = 130, PAD = 28;
const COLORS = ["#1f8a4c", "#3b6fd4", "#c98a12", "#8e44ad", "#b3261e", "#16a0a0", "#6b7483"];
let selfId = null, members = [], tick = 0, history = [];
const seen = new Map();

async function getJSON(url) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 900);
  try {
    const r = await fetch(url, {signal: ctl.signal, cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    return await r.json();
  } finally { clearTimeout(timer); }
}
function urlFor(n, path) { return n.id === selfId ? path : "http://" + n.http + path; }
async function fromAny(path) {
  const tries = [{id: selfId}].concat(members.filter(n => n.id !== selfId && n.http));
  for (const n of tries) {
    try { return await getJSON(urlFor(n, path)); } catch (e) { /* the next one */ }
  }
  return null;
}
function el(tag, attrs, text) {
  const e = document.createElementNS(tag === "td" || tag === "tr" || tag === "span" || tag === "a"
    ? "http://www.w3.org/1999/xhtml" : "http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function poll() {
  if (tick % 10 === 0 || !members.length) {
    const c = await fromAny("/cluster");
    if (c) { if (selfId === null) selfId = c.self; members = c.nodes; }
  }
  tick++;
  await Promise.all(members.map(async n => {
    if (!n.http && n.id !== selfId) { seen.set(n.id, {err: "no HTTP address known"}); return; }
    try { seen.set(n.id, {st: await getJSON(urlFor(n, "/status"))}); }
    catch (e) {
      seen.set(n.id, {err: e.name === "AbortError" ? "timed out" : String(e.message || e)});
    }
  }));
  if (tick % 5 === 1 || !history.length) {
    const all = await Promise.all(members.filter(n => n.http || n.id === selfId).map(
      n => getJSON(urlFor(n, "/history")).catch(() => null)));
    const first = h => (h && h.samples.length ? h.samples[0].t : Infinity);
    const best = all.reduce((a, b) => (first(b) < first(a) ? b : a), null);
    if (best) history = best.samples;
  }
  render();
}

function render() {
  const ok = members.map(n => seen.get(n.id)).filter(s => s && s.st).map(s => s.st);
  const top = Math.max(0, ...ok.map(s => s.commit_index));
  const leaders = ok.filter(s => s.role === "leader").sort((a, b) => b.term - a.term);
  const lead = document.getElementById("leader");
  if (leaders.length) {
    lead.textContent = "node " + leaders[0].node_id + " (term " + leaders[0].term + ")";
    lead.dataset.id = String(leaders[0].node_id);
  } else { lead.textContent = "none"; lead.dataset.id = ""; }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  const body = document.getElementById("nodes");
  body.replaceChildren();
  for (const n of members) {
    const s = seen.get(n.id) || {err: "not polled yet"};
    const tr = el("tr", {"data-node": n.id});
    tr.appendChild(el("td", {}, String(n.id)));
    const role = s.st ? s.st.role : "unreachable";
    const td = el("td", {});
    td.appendChild(el("span", {class: "role " + role}, role));
    tr.appendChild(td);
    if (s.st) {
      const cells = [s.st.term, s.st.leader_id ?? "-", s.st.commit_index, s.st.applied_index,
                     top - s.st.applied_index];
      for (const v of cells) tr.appendChild(el("td", {class: "num"}, String(v)));
      tr.appendChild(el("td", {}, s.st.address));
    } else {
      tr.appendChild(el("td", {class: "err", colspan: "6"}, "no answer: " + s.err));
    }
    const link = el("td", {});
    if (n.http) link.appendChild(el("a", {href: "http://" + n.http + "/"}, n.http));
    tr.appendChild(link);
    body.appendChild(tr);
  }
  drawRate(); drawLeaders();
}

function xOf(t, now) { return PAD + (W - PAD - 6) * (1 - (now - t) / WINDOW_S); }
function axes(svg, now) {
  svg.appendChild(el("line", {x1: PAD, y1: H - 18, x2: W - 6, y2: H - 18, stroke: "#ccd2dc"}));
  svg.appendChild(el("text", {x: PAD, y: H - 4}, "-5 min"));
  svg.appendChild(el("text", {x: W - 30, y: H - 4}, "now"));
}
function recent() {
  const now = Date.now() / 1000;
  return [now, history.filter(s => now - s.t <= WINDOW_S)];
}
function drawRate() {
  const svg = document.getElementById("rate");
  svg.replaceChildren();
  const [now, hs] = recent();
  axes(svg, now);
  const pts = [];
  for (let i = 1; i < hs.length; i++) {
    const dt = hs[i].t - hs[i - 1].t;
    // A node that followed no leader had a stale commit: its catch-up is no write burst.
    if (hs[i - 1].leader_id === null) continue;
    if (dt > 0) pts.push([hs[i].t, Math.max(0, hs[i].commit_index - hs[i - 1].commit_index) / dt]);
  }
  const max = Math.max(1, ...pts.map(p => p[1]));
  svg.appendChild(el("text", {x: 2, y: 12}, String(Math.round(max))));
  svg.appendChild(el("text", {x: 2, y: H - 20}, "0"));
  const y = v => (H - 20) - (H - 34) * v / max;
  if (pts.length > 1) {
    const d = pts.map((p, i) => (i ? "L" : "M") + xOf(p[0], now).toFixed(1) + " "
                                + y(p[1]).toFixed(1));
    svg.appendChild(el("path", {d: d.join(" "), fill: "none", stroke: "#3b6fd4",
                                "stroke-width": 1.5}));
  }
  const last = pts.length ? pts[pts.length - 1][1] : 0;
  document.getElementById("rate-now").textContent = "(now " + last.toFixed(1) + ")";
}
function drawLeaders() {
  const svg = document.getElementById("leaders");
  svg.replaceChildren();
  const [now, hs] = recent();
  axes(svg, now);
  let changes = 0, prev, labelX = -100;
  for (let i = 0; i < hs.length; i++) {
    const s = hs[i], next = i + 1 < hs.length ? hs[i + 1].t : now;
    const id = s.leader_id;
    if (i > 0 && id !== null && prev !== undefined && prev !== null && id !== prev) changes++;
    if (id !== null) prev = id;
    const x0 = xOf(s.t, now), x1 = xOf(next, now);
    const color = id === null ? "#e3e7ee" : COLORS[(id - 1) % COLORS.length];
    const w = Math.max(1, x1 - x0 + 0.6);  // no hairline gaps between samples
    svg.appendChild(el("rect", {x: x0, y: 30, width: w, height: 50, fill: color}));
    if (id !== null && (i === 0 || id !== hs[i - 1].leader_id)) {
      svg.appendChild(el("line", {x1: x0, y1: 24, x2: x0, y2: 86, stroke: "#1d2430"}));
      if (x0 - labelX > 22) {
        const right = x0 > W - 30;  // near "now": write the label to the left of the mark
        svg.appendChild(el("text", {x: right ? x0 - 2 : x0 + 2, y: 22,
                                    "text-anchor": right ? "end" : "start"}, "node " + id));
        labelX = x0;
      }
    }
  }
  svg.appendChild(el("text", {x: 2, y: 100}, "term " + (hs.length ? hs[hs.length - 1].term : "?")));
  document.getElementById("changes").textContent =
    "(" + changes + (changes === 1 ? " change" : " changes") + " in 5 min)";
}

async function loop() {
  try { await poll(); } catch (e) { console.error(e); }
  setTimeout(loop, POLL_MS);
}
loop();
</script>
</body>
</html>
"""
