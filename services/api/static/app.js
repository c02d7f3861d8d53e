// pvebalance's page: plain script, no build step, nothing fetched from outside this API (storage.js,
// loaded first, draws the shared storages).
// The token is asked for when the API answers 401 and kept in sessionStorage for this tab.
// Live jobs come from the SSE stream, read with fetch() so the token goes in a header, never a URL.
// Every action that changes something is confirmed first in the <dialog id="confirm">.
"use strict";

const $ = (sel) => document.querySelector(sel);
let RESOURCES = [];  // the dimensions a node's usage is given in: the API's (engine/load.py DIMENSIONS)
const jobs = new Map();  // job id -> latest status event (plus `started`, when it began migrating)
let plan = null;
let cluster = null;
let history = {};  // node -> [{at: unix seconds, usage: {resource: percent}}, ...] (GET /api/v1/usage/history)
let waitingForToken = null;
const NEEDS_TOKEN = "The API needs a token.";
const ACTIVE = ["queued", "waiting", "running"];

function token() { return sessionStorage.getItem("pvebalance-token"); }

function say(text, error = false) {
  const el = $("#message");
  el.textContent = text;
  el.className = error ? "error" : "";
}

function askToken() {
  if (!waitingForToken) {
    waitingForToken = new Promise((resolve) => {
      const form = $("#token-form");
      form.hidden = false;
      $("#token-input").focus();
      form.onsubmit = (ev) => {
        ev.preventDefault();
        sessionStorage.setItem("pvebalance-token", $("#token-input").value.trim());
        form.hidden = true;
        waitingForToken = null;
        say("");  // a refused token says so on the next answer; a good one leaves nothing to say
        resolve();
      };
    });
  }
  return waitingForToken;
}

// A 401: with no token the API needs one; with one, the API refused it (wrong or revoked).
async function unauthorized(answer) {
  if (token()) {
    const body = await answer.json().catch(() => null);
    sessionStorage.removeItem("pvebalance-token");
    say(`The API refused this token${body && body.detail ? ` (${body.detail})` : ""}: give another.`, true);
  } else {
    say(NEEDS_TOKEN, true);
  }
  await askToken();
}

async function api(path, options = {}) {
  for (;;) {
    const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
    if (token()) headers.Authorization = "Bearer " + token();
    const answer = await fetch(path, Object.assign({}, options, { headers }));
    if (answer.status === 401) { await unauthorized(answer); continue; }
    const body = answer.headers.get("content-type")?.includes("json") ? await answer.json() : null;
    if (!answer.ok) {
      const detail = body && (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
      const error = new Error(detail || `HTTP ${answer.status}`);
      error.status = answer.status;
      throw error;
    }
    return body;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") node.onclick = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function pct(v) { return v === null || v === undefined ? "–" : `${v.toFixed(1)}%`; }
function span(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : ""; }
function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

// Ask before doing: resolves to the reason typed (maybe "") when confirmed, null when not.
function confirmAction(title, text, yes, withReason = false) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  $("#confirm-reason-label").hidden = !withReason;
  $("#confirm-reason").value = "";
  dialog.returnValue = "";
  dialog.showModal();
  $("#confirm-no").focus();  // Enter alone never drains a node
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === "yes" ? $("#confirm-reason").value.trim() : null);
  });
}

async function confirmed(path, what, title, text, yes, body = {}, reasonKey = null) {
  const reason = await confirmAction(title, text, yes, reasonKey !== null);
  if (reason === null) { say(`${what}: not done`); return; }
  if (reasonKey && reason) body[reasonKey] = reason;
  await request(path, what, body);
}

function sparkline(node, resource) {
  const points = (history[node] || []).map((s) => [s.at, s.usage[resource]]).filter(([, v]) => typeof v === "number");
  if (points.length < 2) return null;
  const t0 = points[0][0], t1 = points[points.length - 1][0] || t0 + 1;
  const xy = points.map(([t, v]) => `${((100 * (t - t0)) / (t1 - t0 || 1)).toFixed(1)},${(100 - Math.min(v, 100)).toFixed(1)}`);
  // parsed as HTML, an <svg> element is in the SVG namespace (the numbers are ours, never text from the API)
  const box = document.createElement("span");
  box.innerHTML = `<svg viewBox="0 0 100 100" preserveAspectRatio="none"><polyline points="${xy.join(" ")}"/></svg>`;
  const svg = box.firstChild;
  const hours = ((t1 - t0) / 3600).toFixed(1);
  return el("div", { class: "spark", "data-resource": resource, title: `${resource} over the last ${hours} h (${points.length} snapshots)` },
    el("span", { class: "muted" }, `${hours} h`), svg, el("span", { class: "muted" }, pct(Math.max(...points.map((p) => p[1])))));
}

function nodeCard(n) {
  const card = el("div", { class: "node", "data-node": n.name });
  const title = el("h3", {}, n.name,
    el("span", { class: "muted guests" }, `${n.running} running` + (n.guests > n.running ? `, ${n.guests - n.running} stopped` : "")));
  if (!n.online) title.append(el("span", { class: "tag" }, "offline"));
  if (n.maintenance) title.append(el("span", { class: "tag" }, "maintenance"));
  if (n.drained) title.append(el("span", { class: "tag drained" }, "drained"));
  card.append(title);
  for (const r of RESOURCES) {
    const now = n.usage[r], after = n.usage_after_plan[r];
    if (now === null || now === undefined) continue;
    const track = el("div", { class: "track" },
      el("div", { class: "now", style: `width:${Math.min(now, 100)}%` }),
      el("div", { class: "after", style: `width:${Math.min(after ?? now, 100)}%` }));
    card.append(el("div", { class: "bar", "data-resource": r, title: `now ${pct(now)}, after the plan ${pct(after)}` },
      el("span", {}, r), track, el("span", {}, pct(now))));
    const spark = sparkline(n.name, r);
    if (spark) card.append(spark);
  }
  const actions = el("div", { class: "actions" });
  const path = `/api/v1/nodes/${encodeURIComponent(n.name)}`;
  if (n.drained) {
    actions.append(el("button", { type: "button", class: "undrain", onclick: () => confirmed(`${path}/undrain`, `undrain ${n.name}`,
      `Undrain ${n.name}?`, `${n.name} takes guests again; the next plan may move guests onto it.`, `Undrain ${n.name}`) }, "Undrain"));
  } else {
    const stopped = n.guests - n.running;
    actions.append(el("button", { type: "button", class: "drain", onclick: () => confirmed(`${path}/drain`, `drain ${n.name}`,
      `Drain ${n.name}?`, `Every running guest on ${n.name} (${n.running}) is migrated to other nodes, and ${n.name} is kept empty `
      + `until undrained.${stopped ? ` Its ${plural(stopped, "stopped guest")} stay${stopped === 1 ? "s" : ""}.` : ""} `
      + "Refused, with nothing moved, if the other nodes cannot take them.", `Drain ${n.name}`) }, "Drain"));
  }
  card.append(actions);
  return card;
}

async function request(path, what, body = {}) {
  try {
    const accepted = await api(path, { method: "POST", body: JSON.stringify(body) });
    say(`${what}: request ${accepted.request_id} ${accepted.state}`);
    refreshRequests();
    followRequest(accepted.request_id, what);
  } catch (e) {
    say(`${what}: ${e.message}`, true);
  }
}

async function followRequest(id, what) {
  for (let i = 0; i < 600; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    const status = await api(`/api/v1/requests/${id}`).catch(() => null);
    if (!status) continue;
    const details = status.details && status.details.length ? ` (${status.details.join("; ")})` : "";
    say(`${what}: ${status.state}${status.reason ? " – " + status.reason : ""}${details}`, ["refused", "failed"].includes(status.state));
    if (["refused", "done", "failed"].includes(status.state)) { refreshSoon(); return; }
  }
}

const MODES = { automatic: "automatic: plans run at once", manual: "manual: plans wait for approval",
  "dry-run": "dry-run: plans are shown, never run" };

async function refreshCluster() {
  try {
    const c = await api("/api/v1/cluster");
    cluster = c;
    RESOURCES = c.resources || Object.keys((c.nodes[0] || { usage: {} }).usage);
    const mode = $("#mode");
    mode.textContent = c.balancing_enabled === false ? "balancing off" : (MODES[c.mode_of_operation] || c.mode_of_operation);
    mode.className = `mode ${c.balancing_enabled === false ? "off" : c.mode_of_operation}`;
    mode.dataset.mode = c.mode_of_operation;
    mode.title = `balancing.mode_of_operation, ${c.mode_from === "planner" ? "as the running planner reports it" : "from the API's config (no planner seen)"}`;
    // every balanced dimension: its spread now and its band
    const spreads = Object.entries(c.spreads || { [c.method]: c.spread_pp })
      .map(([d, s]) => `${d} ${s.toFixed(1)} pp (band ${(c.bands || {})[d] ?? c.balanciness})`).join(", ");
    const paused = c.paused ? ` · PAUSED${c.paused.reason ? ` (${c.paused.reason})` : ""}` : "";
    $("#cluster-line").textContent = `${c.cluster || "cluster"} · ${c.method}/${c.mode} · spread ${spreads} · snapshot ${Math.round(c.age_s)} s old${paused}`;
    $("#nodes").replaceChildren(...c.nodes.map(nodeCard));
    renderStorages();
    $("#kept").textContent = c.kept ? `· ${c.kept}` : "";  // the retention settings, as the API says them
  } catch (e) {
    $("#cluster-line").textContent = e.message;
  }
}

function list(sel, items) {
  $(sel).replaceChildren(...items.map((t) => el("li", {}, t)));
  $(sel).hidden = items.length === 0;
}

async function refreshPlan() {
  let view;
  try { view = await api("/api/v1/plans/latest"); } catch (e) { $("#plan-line").textContent = e.message; return; }
  plan = view;
  const p = view.plan, state = view.status ? view.status.state : "unknown";
  const actions = view.actions || view.moves;  // every action with its job: migrations and disk moves
  const disks = actions.filter((a) => a.kind === "move-disk");
  // GiB as Migration.gib_moved counts them: memory copied live, local disks; the time over the nodes' links
  const gib = p.migrations.reduce((sum, m) => sum + ((m.online ? m.mem_bytes : 0) + m.local_disk_bytes) / 2 ** 30, 0);
  const diskGib = disks.reduce((sum, d) => sum + d.size_gib, 0);
  // each dimension the plan balances, before and after (a plan of one: its spread_pp)
  const dims = Object.keys(p.after.dimensions || {});
  const spread = dims.length > 1
    ? dims.map((d) => `${d} ${p.before.dimensions[d].spread_pp.toFixed(1)} → ${p.after.dimensions[d].spread_pp.toFixed(1)}`).join(", ")
    : `${p.before.spread_pp.toFixed(1)} → ${p.after.spread_pp.toFixed(1)}`;
  // how long it has run: from its first move's start (the jobs' running events) to now
  const starts = actions.map((m) => (jobs.get(m.job_id) || {}).started).filter(Boolean).map((t) => Date.parse(t));
  const running = ["running", "approved"].includes(state) && starts.length ? ` · running ${span((Date.now() - Math.min(...starts)) / 1000)}` : "";
  const expected = p.migrations.length ? ` · ${gib.toFixed(1)} GiB · expected ${span(p.expected_seconds)}` : "";
  const diskMoves = disks.length ? ` · ${plural(disks.length, "disk move")} · ${diskGib.toFixed(1)} GiB` : "";
  $("#plan-line").textContent = `${p.plan_id} · ${state}${view.status && view.status.reason ? ` (${view.status.reason})` : ""} · ${p.outcome} · spread ${spread} pp${p.migrations.length || !disks.length ? ` · ${plural(p.migrations.length, "move")}` : ""}${expected}${diskMoves}${running}`;
  $("#approve").hidden = state !== "recommended" || actions.length === 0;
  $("#reject").hidden = state !== "recommended" || actions.length === 0;
  $("#plan-outcome").textContent = p.outcome_reason;
  $("#plan-outcome").hidden = !p.outcome_reason;
  list("#plan-unmet", [...(p.unmet || []).map((u) => `${u.rule}: ${u.reason}${u.vmids.length ? ` (${u.vmids.join(", ")})` : ""}`), ...(p.violations || [])]);
  list("#plan-notes", p.notes || []);
  $("#moves tbody").replaceChildren(...actions.map((m) => {
    const s = (jobs.get(m.job_id) || {}).state || m.job_state || "not enqueued";
    const disk = m.kind === "move-disk";
    // a disk move: its disk from one storage to another, on the guest's node, in its batch
    const what = disk ? `disk ${m.disk}` : "migrate";
    const why = disk ? `${m.size_gib.toFixed(1)} GiB on ${m.node}, batch ${m.batch}` : m.detail;
    return el("tr", { "data-vmid": m.vmid, "data-kind": m.kind, "data-job": m.job_id },
      el("td", {}, `${m.name || m.vmid} (${m.id})`), el("td", { class: "what" }, what), el("td", {}, m.source), el("td", {}, m.target),
      el("td", {}, disk ? "storage" : m.reason), el("td", { title: m.job_message || "" }, why), el("td", { class: `state-${s}` }, s));
  }));
  renderStorages();
}

function jobTime(e) {
  if (e.state === "running" && e.started) return `${span((Date.now() - Date.parse(e.started)) / 1000)} so far`;
  return typeof e.duration_s === "number" ? span(e.duration_s) : "";
}

function cancelJob(e) {
  const what = e.action !== "move-disk" ? `Guest ${e.vmid}` : e.disk ? `Disk ${e.disk} of guest ${e.vmid}` : `A disk of guest ${e.vmid}`;
  return confirmed(`/api/v1/jobs/${encodeURIComponent(e.job_id)}/cancel`, `cancel ${e.job_id}`, `Cancel job ${e.job_id}?`,
    `${what} stays on ${e.source}: its move to ${e.target} is dropped before it starts. The rest of its plan goes on.`,
    "Cancel the job").then(() => loadJobs());
}

function renderJobs() {
  const rows = [...jobs.values()].sort((a, b) => (a.at < b.at ? 1 : -1)).slice(0, 100);
  $("#jobs tbody").replaceChildren(...rows.map((e) => el("tr", { "data-job": e.job_id, "data-vmid": e.vmid, "data-kind": e.action || "migrate" },
    el("td", {}, e.job_id), el("td", {}, e.disk ? `${e.vmid} ${e.disk}` : String(e.vmid)), el("td", {}, e.source), el("td", {}, e.target),
    el("td", { class: `state-${e.state}` }, e.state), el("td", { class: "elapsed" }, jobTime(e)), el("td", {}, e.message || ""),
    el("td", {}, time(e.at)),
    el("td", {}, ["queued", "waiting"].includes(e.state) ? el("button", { type: "button", class: "cancel", onclick: () => cancelJob(e) }, "Cancel") : ""))));
}

async function loadJobs() {
  const list = await api("/api/v1/jobs?limit=100").catch(() => []);
  for (const j of list) {
    const known = jobs.get(j.job_id);
    if (known && j.disk) known.disk = j.disk;  // a job first seen in the stream: its event names no disk
    if (!known || known.at <= (j.updated_at || j.created_at)) {
      jobs.set(j.job_id, { job_id: j.job_id, vmid: j.vmid, action: j.action, disk: j.disk, source: j.source, target: j.target,
        state: j.state, message: j.message, at: j.updated_at || j.created_at, started: j.started_at, duration_s: j.duration_s });
    }
  }
  renderJobs();
}

function requestOf(r) {
  const q = r.request;
  if (q.node) return q.node + (q.include_stopped ? " (with stopped guests)" : "");
  if (q.plan_id) return q.plan_id + (q.vmids ? ` (${q.vmids.join(", ")})` : "");
  if (q.action === "pause") return q.seconds ? `for ${span(q.seconds)}` : "until resumed";
  return q.dry_run ? "dry run" : "";
}

async function refreshRequests() {
  const rows = await api("/api/v1/requests").catch(() => null);
  if (!rows) return;
  $("#requests tbody").replaceChildren(...rows.map((r) => el("tr", { "data-request": r.request.request_id, "data-action": r.request.action },
    el("td", { title: r.request.at }, `${new Date(r.request.at).toLocaleString()}`), el("td", {}, r.request.action),
    el("td", {}, requestOf(r)), el("td", {}, r.request.who), el("td", { class: `state-${r.state}` }, r.state),
    el("td", { title: r.request.reason ? `why: ${r.request.reason}` : "" }, [r.reason, ...(r.details || [])].filter(Boolean).join("; ")))));
}

async function refreshPlans() {
  const rows = await api("/api/v1/plans?limit=20").catch(() => null);
  if (!rows) return;
  $("#plans tbody").replaceChildren(...rows.map((p) => el("tr", { "data-plan": p.plan_id },
    el("td", {}, p.plan_id), el("td", {}, new Date(p.created_at).toLocaleString()),
    el("td", {}, (p.state || "gone") + (p.reason ? ` (${p.reason})` : "")), el("td", { title: p.outcome_reason }, p.outcome),
    el("td", {}, String(p.migrations) + (p.disk_moves ? ` + ${plural(p.disk_moves, "disk move")}` : "")),
    el("td", {}, `${p.spread_before_pp.toFixed(1)} → ${p.spread_after_pp.toFixed(1)}`))));
}

async function refreshHistory() {
  // Each node's usage over the last hours; an API without it (404) leaves the cards without lines.
  const doc = await api("/api/v1/usage/history").catch(() => null);
  if (doc && doc.nodes) history = doc.nodes;
}

let jobsTimer = null;
function loadJobsSoon() { clearTimeout(jobsTimer); jobsTimer = setTimeout(loadJobs, 500); }

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { refreshCluster(); refreshPlan(); refreshRequests(); refreshPlans(); }, 300);
}

async function stream() {
  let last = null;
  for (;;) {
    try {
      const headers = token() ? { Authorization: "Bearer " + token() } : {};
      if (last) headers["Last-Event-ID"] = last;
      const answer = await fetch("/api/v1/events", { headers });
      if (answer.status === 401) { await unauthorized(answer); continue; }
      $("#stream-state").textContent = "live";
      const reader = answer.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("data: ")) data += line.slice(6);
            else if (line.startsWith("id: ")) last = line.slice(4);
          }
          if (!data) continue;
          const event = JSON.parse(data);
          const known = jobs.get(event.job_id) || {};
          event.started = event.state === "running" ? event.at : known.started;
          event.disk = known.disk;  // the event names no disk: the job list's record does
          if (event.action === "move-disk" && !event.disk) loadJobsSoon();
          jobs.set(event.job_id, event);
          renderJobs();
          refreshSoon();
        }
      }
    } catch (e) { /* the connection dropped: reconnect below */ }
    $("#stream-state").textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

$("#pause").onclick = () => confirmed("/api/v1/pause", "pause", "Pause balancing?",
  "No new migrations start until resumed; the ones running now finish. Drains wait too.", "Pause", {}, "reason");
$("#resume").onclick = () => confirmed("/api/v1/resume", "resume", "Resume balancing?",
  `Migrations start again, as the mode says (${cluster ? cluster.mode_of_operation : "unknown"}).`, "Resume");
$("#approve").onclick = () => {
  if (!plan) return;
  const p = plan.plan, disks = p.actions.filter((a) => a.kind === "move-disk");
  const moves = p.migrations.length ? `Its ${plural(p.migrations.length, "move")} start now: `
    + `${p.migrations.map((m) => `${m.name} ${m.source} → ${m.target}`).join(", ")}; expected ${span(p.expected_seconds)}. ` : "";
  const diskMoves = disks.length ? `${plural(disks.length, "disk")} move${disks.length === 1 ? "s" : ""} to other storages, batch by batch: `
    + `${disks.map((d) => `${d.vmid} ${d.disk} ${d.source} → ${d.target}`).join(", ")}.` : "";
  return confirmed(`/api/v1/plans/${p.plan_id}/approve`, `approve ${p.plan_id}`, `Approve ${p.plan_id}?`,
    `${moves}${diskMoves}`.trim(), "Approve and run");
};
$("#reject").onclick = () => {
  if (!plan) return;
  const p = plan.plan;
  return confirmed(`/api/v1/plans/${p.plan_id}/reject`, `reject ${p.plan_id}`, `Reject ${p.plan_id}?`,
    `None of its ${plural(p.actions.length, "move")} run, and the planner does not plan them again for a while (planner.reject_hold).`, "Reject", {}, "reason");
};

(async () => {
  await refreshCluster();
  if (token()) say("");
  await loadJobs();
  await refreshPlan();
  refreshRequests();
  refreshPlans();
  await refreshHistory();
  refreshCluster();
  stream();
  setInterval(() => { refreshCluster(); refreshPlan(); refreshRequests(); refreshPlans(); }, 5000);
  setInterval(refreshHistory, 60000);
  // elapsed time of running migrations, by the second
  setInterval(() => { if ([...jobs.values()].some((e) => e.state === "running")) renderJobs(); }, 1000);
})();
