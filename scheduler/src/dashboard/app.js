// harvest's dashboard: fetches api/cluster every REFRESH_MS and draws the nodes' CPUs, memory and
// GPUs by state, the utilization timeline, the leases and the recent events. Plain DOM, no
// libraries, no build step; every string from the server goes in through textContent.
"use strict";

const REFRESH_MS = 2000;
const STATES = ["batch", "function", "idle", "reserved"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function mib(n) {
  return n >= 10240 ? (n / 1024).toFixed(1) + " GiB" : n + " MiB";
}

function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

// A bar with one segment per state, widths by share of the total.
function bar(counts) {
  const b = el("div", { class: "bar" });
  const total = counts.total || 1;
  for (const s of STATES) {
    if (counts[s] > 0) {
      b.append(el("span", { class: s, style: `width:${(100 * counts[s]) / total}%`, title: `${s}: ${counts[s]}` }));
    }
  }
  return b;
}

function summaryCard(title, counts, fmt) {
  const parts = STATES.map((s) => `${s} ${fmt(counts[s])}`).join(" · ");
  return el("div", { class: "card" },
    el("div", { class: "muted", text: title }),
    el("div", { class: "big", text: `${fmt(counts.function)} lent of ${fmt(counts.total)}` }),
    bar(counts),
    el("div", { class: "muted", text: parts }));
}

function renderSummary(c) {
  const box = document.getElementById("summary");
  const up = c.nodes.filter((n) => n.state === "up").length;
  const active = c.leases.filter((l) => l.state === "active").length;
  const gpus = c.totals.gpus.total > 0
    ? summaryCard("GPUs", c.totals.gpus, String)
    : el("div", { class: "card" }, el("div", { class: "muted", text: "GPUs" }), el("div", { class: "big", text: "none" }),
      el("div", { class: "muted", text: "No agent reports a GPU." }));
  box.replaceChildren(
    summaryCard("CPUs", c.totals.cpus, String),
    summaryCard("Memory", c.totals.memory_mib, mib),
    gpus,
    el("div", { class: "card" },
      el("div", { class: "muted", text: "Nodes and leases" }),
      el("div", { class: "big", text: `${up}/${c.nodes.length} nodes up` }),
      el("div", { class: "muted", text: `${active} active lease(s)` })));
}

function cpuCell(cpu, node, leaseOf) {
  const v = node;
  const classes = ["cpu"];
  const inBatch = v.cpus.batch.includes(cpu);
  const inFunction = v.cpus.function.includes(cpu);
  if (inBatch) classes.push("batch");
  if (inFunction) classes.push("function");
  if (!inBatch && !inFunction) classes.push(v.cpus.idle.includes(cpu) ? "idle" : "reserved");
  const state = classes.slice(1).join("+");
  const lease = leaseOf.get(cpu);
  const attrs = { class: classes.join(" "), "data-cpu": String(cpu), "data-state": state, title: `CPU ${cpu}: ${state}` + (lease ? ` (lease ${lease})` : ""), text: String(cpu) };
  if (lease) attrs["data-lease"] = lease;
  return el("span", attrs);
}

function renderNodes(c) {
  const box = document.getElementById("nodes");
  const cards = c.nodes.map((n) => {
    const leaseOf = new Map();
    for (const l of c.leases) {
      if (l.node === n.name && (l.state === "active" || l.state === "pending")) {
        for (const cpu of l.cpus) leaseOf.set(cpu, l.id);
      }
    }
    const title = el("h3", {}, el("span", { class: "name", text: n.name }), el("span", { class: `badge ${n.state}`, text: n.state }));
    const level = n.interference ? n.interference.level : "none";
    if (level !== "none") {
      title.append(el("span", { class: "badge level", title: n.interference.reason, text: `interference: ${level}` }));
    }
    const cpus = el("div", { class: "cpus" }, ...n.cpus.total.map((cpu) => cpuCell(cpu, n, leaseOf)));
    const u = n.usage;
    const mem = el("div", {},
      el("div", { class: "row" }, el("span", { text: "memory" }), el("span", { text: `${mib(u.memory_mib.function)} lent, ${mib(u.memory_mib.idle)} idle of ${mib(u.memory_mib.total)}` })),
      bar(u.memory_mib));
    const card = el("section", { class: "node card", "data-node": n.name, "data-state": n.state },
      title,
      el("div", { class: "row" }, el("span", { text: "CPUs" }),
        el("span", { class: "cpu-counts", text: `batch ${u.cpus.batch} · function ${u.cpus.function} · idle ${u.cpus.idle}` + (u.cpus.reserved ? ` · reserved ${u.cpus.reserved}` : "") })),
      cpus, mem);
    if (n.gpus.total.length > 0) {
      const gpus = el("div", { class: "gpus" }, ...n.gpus.total.map((g) => {
        const s = n.gpu_states[g] || "reserved";
        return el("span", { class: `gpu ${s}`, "data-gpu": String(g), title: `GPU ${g}: ${s}`, text: `GPU ${g}` });
      }));
      card.append(el("div", { class: "row" }, el("span", { text: "GPUs" }), el("span", { text: `${u.gpus.function} lent, ${u.gpus.idle} idle of ${u.gpus.total}` })), gpus);
    }
    const revoked = Object.entries(n.revocations || {}).map(([k, v]) => `${k} ${v}`).join(", ");
    const reclaims = n.counters ? `${n.counters.reclaims} reclaim(s)` : "";
    if (revoked || reclaims) {
      card.append(el("div", { class: "row" }, el("span", { text: reclaims }), el("span", { text: revoked ? `revoked: ${revoked}` : "" })));
    }
    return card;
  });
  box.replaceChildren(...(cards.length ? cards : [el("p", { class: "muted", text: "No node has registered yet." })]));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

function span(ms) {
  const s = Math.round(ms / 1000);
  return s < 120 ? `${s} s` : `${Math.round(s / 60)} min`;
}

// Batch CPUs, and batch + function CPUs stacked on it, over the last window (or since the
// first sample, while the scheduler has run for less than that); the total as a line.
function renderTimeline(c) {
  const box = document.getElementById("timeline");
  const samples = c.timeline.samples;
  const W = 1000, H = 180, L = 34, B = 18, T = 6;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
  const end = c.generated_unix_ms;
  const first = samples.length ? samples[0].t_unix_ms - c.timeline.interval_ms : end - c.timeline.window_ms;
  const start = Math.max(end - c.timeline.window_ms, Math.min(first, end - 60000));
  const top = Math.max(1, ...samples.map((s) => s.usage.cpus.total));
  const x = (t) => L + ((W - L) * (t - start)) / (end - start);
  const y = (v) => H - B - ((H - B - T) * v) / top;
  root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
  for (const v of [0, top / 2, top]) {
    const t = svg("text", { x: 2, y: y(v) + 3 });
    t.textContent = Number.isInteger(v) ? v : v.toFixed(1);
    root.append(t, svg("line", { class: "axis", x1: L, y1: y(v), x2: W, y2: y(v), "stroke-dasharray": "2 4" }));
  }
  for (let q = 0; q <= 4; q++) {
    const at = start + ((end - start) * q) / 4;
    const t = svg("text", { x: x(at) - (q === 4 ? 24 : 0), y: H - 4 });
    t.textContent = q === 4 ? "now" : `-${span(end - at)}`;
    root.append(t);
  }
  if (samples.length > 0) {
    const area = (value, fill) => {
      const pts = samples.map((s) => `${x(s.t_unix_ms)},${y(value(s))}`);
      const first = x(samples[0].t_unix_ms), last = x(samples[samples.length - 1].t_unix_ms);
      root.append(svg("polygon", { points: `${first},${y(0)} ${pts.join(" ")} ${last},${y(0)}`, fill, "fill-opacity": "0.85" }));
    };
    area((s) => s.usage.cpus.batch + s.usage.cpus.function, "var(--function)");
    area((s) => s.usage.cpus.batch, "var(--batch)");
    root.append(svg("polyline", { points: samples.map((s) => `${x(s.t_unix_ms)},${y(s.usage.cpus.total)}`).join(" "), fill: "none", stroke: "#343a40", "stroke-width": "1.5" }));
  }
  const last = samples[samples.length - 1];
  const caption = last
    ? `now: batch ${last.usage.cpus.batch}, batch + functions ${last.usage.cpus.batch + last.usage.cpus.function} of ${last.usage.cpus.total} CPUs (a sample every ${c.timeline.interval_ms / 1000} s; ${samples.length} over the last ${span(end - samples[0].t_unix_ms)}, the window is ${span(c.timeline.window_ms)})`
    : "no sample yet";
  box.replaceChildren(root, el("div", { class: "muted", text: caption }));
}

function renderLeases(c) {
  const body = document.querySelector("#leases tbody");
  const now = c.generated_unix_ms;
  const rows = c.leases.map((l) => el("tr", { class: l.end_cause ? "ended" : "live", "data-lease": l.id },
    el("td", { text: l.id }), el("td", { text: l.node }), el("td", { text: l.user || String(l.uid) }),
    el("td", { text: l.cpus.join(",") || "-" }), el("td", { text: mib(l.memory_mib) }),
    el("td", { text: l.state }), el("td", { text: ago(l.created_unix_ms, now) }),
    el("td", { class: "reason", text: l.end_reason })));
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "8", class: "muted", text: "No lease yet." }))]));
}

function renderEvents(c) {
  const list = document.getElementById("events");
  const items = c.events.slice(0, 30).map((e) => el("li", { class: e.kind },
    el("time", { text: clock(e.t_unix_ms) }), el("span", { text: e.message })));
  list.replaceChildren(...(items.length ? items : [el("li", { class: "muted", text: "Nothing reclaimed or interfering yet." })]));
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const r = await fetch("api/cluster", { cache: "no-store" });
    if (!r.ok) throw new Error(`api/cluster answered ${r.status}`);
    const c = await r.json();
    renderSummary(c);
    renderNodes(c);
    renderTimeline(c);
    renderLeases(c);
    renderEvents(c);
    document.getElementById("policy").textContent = `policy ${c.policy}`;
    document.getElementById("updated").textContent = `updated ${clock(c.generated_unix_ms)}`;
    document.body.dataset.loaded = "true";
    error.hidden = true;
  } catch (e) {
    error.textContent = `Cannot reach the scheduler: ${e.message}. Retrying every ${REFRESH_MS / 1000} s.`;
    error.hidden = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
