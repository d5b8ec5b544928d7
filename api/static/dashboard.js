// The DSDN cluster dashboard (served by GET /dashboard; api/dashboard.py).
// It reads the member list from this coordinator's /cluster/members, then polls every member's own JSON
// endpoints once a second (the other coordinators answer cross-origin: Access-Control-Allow-Origin: *), each member
// on its own: a slow or silent one does not hold the others' updates back (one waiting for its TIMEOUT_MS halved
// every member's refresh rate). A member that does not answer within TIMEOUT_MS is DOWN. History (the charts) is
// kept in this page only.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 2000;
  const HISTORY_S = 300;        // the charts show the last five minutes
  const RECEIPTS_EVERY = 3;     // poll ticks between two reads of /receipts
  const MEMBERS_EVERY = 30;     // poll ticks between two reads of /cluster/members
  const RECEIPTS_LIMIT = 500;
  const RECEIPTS_SHOWN = 15;
  const COLORS = ["#2563eb", "#16a34a", "#d97706", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAX_PLOTTED = 1e12;     // chart samples at or above it are not plotted (a member may answer anything)
  const MAX_LIST = 16;          // items of a list shown from one member's answer (a lying member sent 100,000)
  const MAX_FIRST_SEEN = 5000;  // receipt ids remembered for the "newest first" order

  const state = {
    members: [],             // [{id, public_key, peer_address, http_url, self}]
    membersError: null,
    views: new Map(),        // member id -> {up, at, health, root, peers, cluster, routing, error}
    history: new Map(),      // member id -> [{t, rate, p50}]
    last: new Map(),         // member id -> {t, final}
    receipts: null,          // {source, docs, truncated, error}
    firstSeen: new Map(),    // receipt id -> when this page first saw it
    polling: new Set(),      // members whose poll loop runs
    polls: new Map(),        // member id -> polls done (for the page's tests: data-polls on its row)
    tick: 0,
  };

  // ---- fetching -------------------------------------------------------------------------------------

  async function getJSON(url) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(new Error(`no answer within ${TIMEOUT_MS / 1000} s`)), TIMEOUT_MS);
    try {
      const resp = await fetch(url, {signal: ctrl.signal, cache: "no-store"});
      let body = null;
      try { body = JSON.parse(await resp.text(), plain); } catch (_) { body = null; }
      return {answered: true, ok: resp.ok, status: resp.status, body, at: Date.now()};
    } catch (err) {
      return {answered: false, ok: false, status: 0, body: null, error: String(err && err.message || err)};
    } finally {
      clearTimeout(timer);
    }
  }

  // A JSON reviver: only plain data. A member's answer {"toString": 0} made every String() of it throw, and with
  // it every render: one lying member blanked the page for good (a reviewer's reproduction).
  function plain(key, value) {
    return key === "toString" || key === "valueOf" || key === "toJSON" ? undefined : value;
  }

  function list(value) {  // an array from an answer, at most MAX_LIST items
    return Array.isArray(value) ? value.slice(0, MAX_LIST) : [];
  }

  function baseOf(member) {
    if (member.self) return "";  // this page's own origin
    return member.http_url ? member.http_url.replace(/\/+$/, "") : null;
  }

  async function loadMembers() {
    const r = await getJSON("/cluster/members");
    if (r.ok && r.body && Array.isArray(r.body.members)) {
      state.members = r.body.members;
      state.membersError = null;
    } else if (!state.members.length) {
      state.membersError = r.answered ? `/cluster/members answered ${r.status}` : "this coordinator does not answer";
    }
  }

  function isHealth(r) {  // a coordinator's /health: 2xx with a JSON object
    return r.ok && r.body !== null && typeof r.body === "object" && !Array.isArray(r.body);
  }

  function whyNotHealth(r) {
    if (!r.answered) return r.error || "no answer";
    return r.ok ? `/health answered HTTP ${r.status} without a JSON object` : `/health answered HTTP ${r.status}`;
  }

  async function pollMember(member) {
    const base = baseOf(member);
    if (base === null) return {up: null, at: Date.now(), error: "no HTTP URL known for this member"};
    const before = state.views.get(member.id);
    if (before && before.up === false) {  // down: one probe until it answers again
      const probe = await getJSON(base + "/health");
      if (!isHealth(probe)) return {...before, at: Date.now(), error: whyNotHealth(probe)};
    }
    const [health, root, peers, cluster, routing] = await Promise.all(
      ["/health", "/state/root", "/cluster/peers", "/cluster/status", "/da/routing"].map(p => getJSON(base + p)));
    if (!isHealth(health)) {
      // no answer, or one that is no coordinator's health (a proxy's 502 for a dead one, a wrong URL's 404):
      // down, saying which (any answer at all counted as up: a member behind a failing proxy showed UP)
      return {up: false, at: Date.now(), since: before && before.up === false ? before.since : Date.now(),
              error: whyNotHealth(health)};
    }
    return {up: true, at: Date.now(), health: health.body, root: root.ok ? root.body : null,
            peers: peers.ok && Array.isArray(peers.body) ? peers.body : null,
            cluster: cluster.ok ? cluster.body : null, routing: routing.ok ? routing.body : null,
            clusterAt: cluster.at};  // (when the receipt counters were read: a slow answer beside it skewed the rate)
  }

  function record(member, view) {
    // the time the counters were read, not when the slowest of the member's answers came (a slow /state/root
    // every other poll drew 40 and 1,400 receipts/s by turns for a steady 100: a reviewer's reproduction)
    const now = (view.up && view.clusterAt ? view.clusterAt : Date.now()) / 1000;
    const receipts = view.up && view.cluster ? view.cluster.receipts : null;
    const series = state.history.get(member.id) || [];
    if (receipts && Number.isFinite(receipts.final)) {  // (numbers only: a member may answer anything)
      const prev = state.last.get(member.id);
      let rate = null;
      if (prev && now > prev.t && receipts.final >= prev.final) rate = (receipts.final - prev.final) / (now - prev.t);
      state.last.set(member.id, {t: now, final: receipts.final});
      const lat = receipts.final_latency_ms;
      series.push({t: now, rate, p50: lat && Number.isFinite(lat.p50) ? lat.p50 : null});
    } else {
      state.last.delete(member.id);
      series.push({t: now, rate: null, p50: null});  // a gap in the line
    }
    while (series.length && series[0].t < now - HISTORY_S) series.shift();
    state.history.set(member.id, series);
  }

  function firstUp() {
    const up = state.members.filter(m => (state.views.get(m.id) || {}).up);
    return up.find(m => m.self) || up[0] || null;
  }

  async function pollReceipts() {
    const source = firstUp();
    if (!source) return;
    const r = await getJSON(`${baseOf(source)}/receipts?limit=${RECEIPTS_LIMIT}`);
    if (!r.ok || !r.body || !Array.isArray(r.body.receipts)) {
      state.receipts = {source: source.id, docs: [], truncated: false,
                        error: r.body && r.body.message ? r.body.message : `answered ${r.status}`};
      return;
    }
    const now = Date.now();
    const docs = r.body.receipts.filter(d => d && typeof d === "object" && typeof d.receipt_id === "string")
      .slice(0, RECEIPTS_LIMIT);
    for (const doc of docs) {
      if (!state.firstSeen.has(doc.receipt_id)) state.firstSeen.set(doc.receipt_id, now);
    }
    if (state.firstSeen.size > MAX_FIRST_SEEN) {  // forget those no longer listed (a page left open for days)
      const listed = new Set(docs.map(d => d.receipt_id));
      for (const id of state.firstSeen.keys()) if (!listed.has(id)) state.firstSeen.delete(id);
    }
    state.receipts = {source: source.id, docs, truncated: r.body.next_after !== null, error: null};
  }

  function sleep(ms) {
    return new Promise(resolve => setTimeout(resolve, ms));
  }

  async function pollLoop(id) {  // one member, once a second, until it leaves the member list
    while (true) {
      const member = state.members.find(m => m.id === id);
      if (!member) break;
      const started = Date.now();
      let view;
      try {
        view = await pollMember(member);
      } catch (err) {
        view = {up: false, at: Date.now(), error: String(err && err.message || err)};
      }
      if (!state.members.some(m => m.id === id)) break;
      state.views.set(id, view);
      record(member, view);
      state.polls.set(id, (state.polls.get(id) || 0) + 1);
      await sleep(Math.max(100, POLL_MS - (Date.now() - started)));
    }
    state.polling.delete(id);  // (left the member list: its row, its chart line and its counters go)
    for (const table of [state.views, state.history, state.last, state.polls]) table.delete(id);
  }

  async function receiptsLoop() {  // on its own too: a slow source does not hold the page's refresh back
    while (true) {
      const started = Date.now();
      try {
        await pollReceipts();
      } catch (err) {
        console.warn("dashboard: reading receipts failed", err);
      }
      await sleep(Math.max(100, RECEIPTS_EVERY * POLL_MS - (Date.now() - started)));
    }
  }

  async function tick() {
    const started = Date.now();
    try {
      if (state.tick % MEMBERS_EVERY === 0 || !state.members.length) await loadMembers();
      for (const m of state.members) {
        if (!state.polling.has(m.id)) {
          state.polling.add(m.id);
          pollLoop(m.id);
        }
      }
      render();  // once a tick, whatever the loops brought in meanwhile
    } catch (err) {
      console.warn("dashboard: poll failed", err);
    }
    state.tick += 1;
    setTimeout(tick, Math.max(100, POLL_MS - (Date.now() - started)));
  }

  // ---- rendering ------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "title") node.title = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : text(c));
    }
    return node;
  }

  function text(value) {  // what a cell shows of a value from an answer: never throws
    if (typeof value === "string") return value;
    if (typeof value === "number" || typeof value === "boolean") return String(value);
    try { return String(value); } catch (_) { return "(invalid)"; }
  }

  // Render one part of the page, or say it failed: one member's malformed answer must not stop the rest.
  function guarded(what, fn, fallback) {
    try { return fn(); } catch (err) {
      console.warn(`dashboard: cannot render ${what}`, err);
      return fallback === undefined ? null : fallback(err);
    }
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function short(hex, n = 12) {
    return typeof hex === "string" && hex.length > n ? hex.slice(0, n) + "…" : (hex || "");
  }

  function majority(values) {
    const counts = new Map();
    for (const v of values) if (v) counts.set(v, (counts.get(v) || 0) + 1);
    let best = null;
    let bestCount = 0;
    let total = 0;
    for (const [v, c] of counts) { total += c; if (c > bestCount) { best = v; bestCount = c; } }
    // a value only when more than half hold it (a split, or three roots, marked the first member's as right and
    // the others as differing: a reviewer's reproduction; `dsdn status` asks more than half too)
    return {value: bestCount * 2 > total ? best : null, distinct: counts.size};
  }

  function colorOf(id) {
    const i = state.members.findIndex(m => m.id === id);
    return COLORS[(i < 0 ? 0 : i) % COLORS.length];
  }

  function statusOf(view) {
    if (!view || view.up === null) return "UNKNOWN";
    if (view.up === false) return "DOWN";
    if (view.health && view.health.ready === false) return "NOT READY";
    return "UP";
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function renderMembers() {
    const upViews = state.members.map(m => state.views.get(m.id)).filter(v => v && v.up);
    const roots = majority(upViews.map(v => v.root && v.root.root));
    const keys = majority(upViews.map(v => v.cluster && v.cluster.group_public_key));
    const rows = state.members.map(m => guarded(`member ${m.id}`, () => {
      const v = state.views.get(m.id);
      const status = statusOf(v);
      const up = v && v.up;
      const root = up && v.root ? v.root.root : null;
      const key = up && v.cluster ? v.cluster.group_public_key : null;
      const receipts = up && v.cluster ? v.cluster.receipts : null;
      const lat = receipts ? receipts.final_latency_ms : null;
      const routing = up ? v.routing : null;
      const layers = routing && Array.isArray(routing.write_order) ? list(routing.write_order).map(name => {
        const healthy = routing[`${name}_healthy`];
        return el("span", {class: `chip ${healthy ? "ok" : "bad"}${name === routing.current_state ? " current" : ""}`,
                           title: `${name}: ${healthy ? "healthy" : "unhealthy"}`
                                  + (name === routing.current_state ? " (writes go here)" : "")},
                  `${name} ${healthy ? "✓" : "✗"}`);
      }) : [];
      const url = m.self ? location.origin : (m.http_url || "");
      const host = url.replace(/^https?:\/\//, "");
      return el("tr", {"data-member": m.id, "data-polls": String(state.polls.get(m.id) || 0),
                       class: `member status-${status.toLowerCase().replace(" ", "-")}`},
        el("td", {class: "id"}, m.id, m.self ? el("span", {class: "muted"}, " (this page)") : null),
        el("td", {}, url ? el("a", {href: `${url}/dashboard`, title: `${url}/dashboard`}, host) : "unknown"),
        el("td", {class: `status ${status.toLowerCase().replace(" ", "-")}`, "data-status": status,
                  title: v && v.error ? v.error : (v && v.health ? v.health.status : "")}, status),
        el("td", {class: `mono root${root && roots.distinct > 1 && root !== roots.value ? " differs" : ""}`,
                  title: root || ""}, root ? short(root, 12) : "—"),
        el("td", {class: "num"}, up && v.root ? v.root.events_applied : "—"),
        el("td", {class: "num"}, up && v.root ? v.root.pending : "—"),
        el("td", {}, routing ? `${routing.current_state} (${routing.status})` +
                     (routing.pending_reconcile ? `, ${routing.pending_reconcile} to reconcile` : "") : "—"),
        el("td", {class: "layers"}, ...layers),
        el("td", {class: `mono group-key${key && keys.distinct > 1 && key !== keys.value ? " differs" : ""}`, title: key || ""},
           key ? short(key, 12) : (up && v.cluster ? (v.cluster.dkg ? `DKG ${v.cluster.dkg.state}` : "none") : "—")),
        el("td", {class: "num final"}, receipts ? receipts.final : "—"),
        el("td", {class: "num"}, lat ? `${text(lat.p50)} / ${text(lat.p99)}` : "—"));
    }, () => el("tr", {"data-member": m.id, class: "member status-invalid"},
               el("td", {class: "id"}, m.id), el("td", {colspan: 10, class: "bad"}, "invalid answer"))));
    replaceRows(document.querySelector("#members tbody"), rows);
    const note = document.getElementById("members-note");
    note.textContent = state.membersError ? `Member list: ${state.membersError}` :
      (state.members.some(m => !m.self && !m.http_url)
        ? "UNKNOWN: the cluster config names no HTTP URL for this member (it is not a quorum validator)." : "");

    const up = state.members.filter(m => (state.views.get(m.id) || {}).up).length;
    const summaryUp = document.getElementById("summary-up");
    summaryUp.textContent = `${up} / ${state.members.length} members up`;
    summaryUp.className = `pill ${up === state.members.length && up > 0 ? "ok" : "bad"}`;  // (0 / 0: not ok)
    const summaryRoots = document.getElementById("summary-roots");
    summaryRoots.textContent = roots.distinct > 1 ? `state roots differ (${roots.distinct})`
      : (roots.distinct === 1 ? "state roots agree" : "no state root");
    summaryRoots.className = `pill ${roots.distinct > 1 ? "bad" : (roots.distinct === 1 ? "ok" : "warn")}`;
    const summaryKey = document.getElementById("summary-key");
    summaryKey.textContent = keys.distinct > 1 && !keys.value ? `group keys differ (${keys.distinct})`
      : (keys.value ? `group key ${short(keys.value, 16)}` : "no group key yet");
    summaryKey.className = `pill ${keys.distinct > 1 ? "bad" : (keys.value ? "ok" : "warn")}`;
    document.getElementById("summary-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  function renderLinks() {
    const table = document.getElementById("links");
    const ids = state.members.map(m => m.id);
    table.querySelector("thead").replaceChildren(
      el("tr", {}, el("th", {}, "from \\ to"), ...ids.map(id => el("th", {}, id))));
    const rows = state.members.map(m => {
      const v = state.views.get(m.id);
      const cells = ids.map(to => {
        if (to === m.id) return el("td", {class: "self"}, "—");
        if (!v || !v.up || !v.peers) return el("td", {class: "unknown", "data-link": `${m.id}>${to}`}, "?");
        const link = v.peers.find(p => p && typeof p === "object" && p.id === to);
        if (!link) return el("td", {class: "unknown", "data-link": `${m.id}>${to}`}, "not a peer");
        const cls = link.state === "up" ? "ok" : (link.state === "suspect" ? "warn" : "bad");
        const rtt = link.state !== "up" || link.rtt_ms === null || link.rtt_ms === undefined ? ""
          : ` ${Number(link.rtt_ms).toFixed(1)} ms`;
        return el("td", {class: `link ${cls}`, "data-link": `${m.id}>${to}`, "data-state": link.state,
                         title: `${link.address}; in ${link.messages_in} / out ${link.messages_out} messages; ` +
                                `${link.errors} errors${link.last_error ? "; last: " + link.last_error : ""}`},
                  `${link.state}${rtt}`);
      });
      return el("tr", {}, el("th", {}, m.id), ...cells);
    });
    replaceRows(table.querySelector("tbody"), rows);
  }

  function niceCeil(v) {  // the next 1, 2 or 5 times a power of ten: round grid lines
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart(node, field, unit) {
    const W = 600, H = 200, L = 44, R = 8, T = 10, B = 22;
    const now = Date.now() / 1000;
    let max = 0;
    // a sample is plotted when finite and below MAX_PLOTTED: one member's 1e308 made every grid line NaN for the five
    // minutes it stayed in the history (a reviewer's reproduction)
    const val = p => (Number.isFinite(p[field]) && p[field] >= 0 && p[field] < MAX_PLOTTED ? p[field] : null);
    for (const series of state.history.values()) for (const p of series) if (val(p) !== null) max = Math.max(max, val(p));
    max = niceCeil(max * 1.1);
    const x = t => L + (W - L - R) * (1 - (now - t) / HISTORY_S);
    const y = v => T + (H - T - B) * (1 - v / max);
    const parts = [];
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      parts.push(svg("line", {x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline"}));
      parts.push(svg("text", {x: L - 4, y: y(v) + 4, class: "axis", "text-anchor": "end"},
                     String(Number(v.toPrecision(3)))));
    }
    for (const s of [300, 240, 180, 120, 60, 0]) {
      parts.push(svg("text", {x: x(now - s), y: H - 6, class: "axis", "text-anchor": "middle"},
                     s ? `-${s / 60}m` : "now"));
    }
    for (const [id, series] of state.history) {
      let d = "";
      const dots = [];  // samples with no neighbour to draw a line to
      series.forEach((p, i) => {
        if (val(p) === null) return;
        const joined = i > 0 && val(series[i - 1]) !== null;
        d += `${joined ? "L" : "M"}${x(p.t).toFixed(1)},${y(val(p)).toFixed(1)}`;
        if (!joined && (i + 1 >= series.length || val(series[i + 1]) === null)) dots.push(p);
      });
      if (d) parts.push(svg("path", {d, fill: "none", stroke: colorOf(id), "stroke-width": 2, class: "series"}));
      for (const p of dots) {
        parts.push(svg("circle", {cx: x(p.t).toFixed(1), cy: y(val(p)).toFixed(1), r: 2.5, fill: colorOf(id)}));
      }
    }
    parts.push(svg("text", {x: L + 4, y: T + 10, class: "axis unit"}, unit));
    node.replaceChildren(...parts);
  }

  function renderCharts() {
    drawChart(document.getElementById("chart-rate"), "rate", "receipts/s");
    drawChart(document.getElementById("chart-latency"), "p50", "ms");
    document.getElementById("chart-legend").replaceChildren(...state.members.map(m => {
      const swatch = svg("svg", {width: 12, height: 12, class: "swatch"});
      swatch.append(svg("rect", {width: 12, height: 12, fill: colorOf(m.id)}));
      return el("span", {class: "legend-item"}, swatch, ` ${m.id}`);
    }));
  }

  function renderDkg() {
    const source = firstUp();
    const v = source ? state.views.get(source.id) : null;
    const c = v && v.cluster;
    const facts = document.getElementById("dkg");
    if (!c) {
      facts.replaceChildren(el("dt", {}, "status"), el("dd", {}, source ? "no answer from /cluster/status" : "no member up"));
      replaceRows(document.querySelector("#dkg-members tbody"), []);
      return;
    }
    const d = c.dkg || {};
    const pairs = [
      ["as seen by", source.id],
      ["group public key", c.group_public_key || "none yet"],
      ["threshold", c.threshold === null ? "—" : `${c.threshold} of ${(c.members || []).length}`],
      ["DKG state", d.state || "—"],
      ["session", d.session || "—"],
      ["sessions run", d.sessions_run === undefined ? "—" : d.sessions_run],
      ["waiting for", list(d.waiting_for).length ? list(d.waiting_for).map(text).join(", ") : "—"],
      ["error", d.error || "—"],
      ["excluded", list(d.excluded).length
        ? list(d.excluded).map(e => `${text(e && e.id)}: ${text(e && e.proof)}`).join("; ") : "—"],
    ];
    facts.replaceChildren(...pairs.flatMap(([k, val]) => [
      el("dt", {}, k), el("dd", {class: k === "group public key" || k === "session" ? "mono" : ""}, val)]));
    replaceRows(document.querySelector("#dkg-members tbody"), list(c.members).filter(m => m && typeof m === "object")
      .map(m => el("tr", {},
      el("td", {}, m.id), el("td", {class: "num"}, m.identifier),
      el("td", {class: "mono", title: m.public_key}, short(m.public_key, 16)),
      el("td", {class: "mono", title: m.verifying_share || ""}, m.verifying_share ? short(m.verifying_share, 16) : "—"),
      el("td", {class: m.excluded ? "bad" : ""}, m.excluded ? "yes" : "no"))));
  }

  function renderReceipts() {
    const r = state.receipts;
    const label = document.getElementById("receipts-source");
    const tbody = document.querySelector("#receipts tbody");
    if (!r) { label.textContent = ""; replaceRows(tbody, []); return; }
    label.textContent = r.error ? `(from ${r.source}: ${r.error})`
      : `(from ${r.source}; newest first${r.truncated ? `, among the first ${RECEIPTS_LIMIT} by id` : ""})`;
    const docs = [...r.docs].sort((a, b) =>
      (state.firstSeen.get(b.receipt_id) - state.firstSeen.get(a.receipt_id)) ||
      ((b.receipt && b.receipt.timestamp || 0) - (a.receipt && a.receipt.timestamp || 0)) ||
      (a.receipt_id < b.receipt_id ? -1 : 1));
    const rows = docs.slice(0, RECEIPTS_SHOWN).map(doc => {
      const rc = doc.receipt || {};
      return el("tr", {"data-receipt": doc.receipt_id},
        el("td", {class: "mono", title: doc.receipt_id}, short(doc.receipt_id, 16)),
        el("td", {class: `status ${doc.status === "final" ? "ok" : (doc.status === "pending" || doc.status === "locked"
                                                                   ? "warn" : "bad")}`}, doc.status),
        el("td", {}, rc.receipt_type || ""), el("td", {}, rc.node_id || ""),
        el("td", {class: "mono", title: rc.subject || ""}, short(rc.subject, 20)),
        el("td", {class: "num"}, doc.epoch),
        el("td", {}, rc.timestamp ? new Date(rc.timestamp * 1000).toLocaleTimeString() : ""),
        el("td", {}, Array.isArray(doc.signers) ? list(doc.signers).map(text).join(", ") : (doc.reason || "")));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", {colspan: 8, class: "muted"}, "no receipts yet")));
    replaceRows(tbody, rows);
  }

  function render() {
    guarded("the members", renderMembers);
    guarded("the peer links", renderLinks);
    guarded("the charts", renderCharts);
    guarded("the DKG", renderDkg);
    guarded("the receipts", renderReceipts);
    document.body.dataset.polls = String(state.tick + 1);
  }

  tick();
  receiptsLoop();
})();
