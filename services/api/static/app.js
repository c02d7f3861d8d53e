// pvebalance's page: plain script, no build step, nothing fetched from outside this API.
// The token is asked for once (when the API answers 401) and kept in sessionStorage for this tab.
// Live jobs come from the SSE stream, read with fetch() so the token goes in a header, never a URL.
"use strict";

const $ = (sel) => document.querySelector(sel);
let RESOURCES = [];  // the dimensions a node's usage is given in: the API's (engine/load.py DIMENSIONS)
const jobs = new Map();  // job id -> latest status event
let plan = null;
let waitingForToken = null;

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
        resolve();
      };
    });
  }
  return waitingForToken;
}

async function api(path, options = {}) {
  for (;;) {
    const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
    if (token()) headers.Authorization = "Bearer " + token();
    const answer = await fetch(path, Object.assign({}, options, { headers }));
    if (answer.status === 401) {
      sessionStorage.removeItem("pvebalance-token");
      say("The API needs a token.", true);
      await askToken();
      continue;
    }
    const body = answer.headers.get("content-type")?.includes("json") ? await answer.json() : null;
    if (!answer.ok) {
      const detail = body && (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
      throw new Error(detail || `HTTP ${answer.status}`);
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
  }
  const actions = el("div", { class: "actions" });
  if (n.drained) actions.append(el("button", { type: "button", class: "undrain", onclick: () => request(`/api/v1/nodes/${encodeURIComponent(n.name)}/undrain`, `undrain ${n.name}`) }, "Undrain"));
  else actions.append(el("button", { type: "button", class: "drain", onclick: () => request(`/api/v1/nodes/${encodeURIComponent(n.name)}/drain`, `drain ${n.name}`) }, "Drain"));
  card.append(actions);
  return card;
}

async function request(path, what, body = {}) {
  try {
    const accepted = await api(path, { method: "POST", body: JSON.stringify(body) });
    say(`${what}: request ${accepted.request_id} ${accepted.state}`);
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

async function refreshCluster() {
  try {
    const c = await api("/api/v1/cluster");
    RESOURCES = c.resources || Object.keys((c.nodes[0] || { usage: {} }).usage);
    // every balanced dimension: its spread now and its band
    const spreads = Object.entries(c.spreads || { [c.method]: c.spread_pp })
      .map(([d, s]) => `${d} ${s.toFixed(1)} pp (band ${(c.bands || {})[d] ?? c.balanciness})`).join(", ");
    $("#cluster-line").textContent = `${c.cluster || "cluster"} · ${c.method}/${c.mode} · spread ${spreads} · snapshot ${Math.round(c.age_s)} s old${c.paused ? " · PAUSED" : ""}`;
    $("#nodes").replaceChildren(...c.nodes.map(nodeCard));
    $("#kept").textContent = c.kept ? `· ${c.kept}` : "";  // the retention settings, as the API says them
  } catch (e) {
    $("#cluster-line").textContent = e.message;
  }
}

async function refreshPlan() {
  let view;
  try { view = await api("/api/v1/plans/latest"); } catch (e) { $("#plan-line").textContent = e.message; return; }
  plan = view;
  const p = view.plan, state = view.status ? view.status.state : "unknown";
  // GiB as Migration.gib_moved counts them: memory copied live, local disks; the time over the nodes' links
  const gib = p.migrations.reduce((sum, m) => sum + ((m.online ? m.mem_bytes : 0) + m.local_disk_bytes) / 2 ** 30, 0);
  const took = p.expected_seconds >= 60 ? `${Math.floor(p.expected_seconds / 60)} min ${Math.round(p.expected_seconds % 60)} s` : `${Math.round(p.expected_seconds)} s`;
  // each dimension the plan balances, before and after (a plan of one: its spread_pp)
  const dims = Object.keys(p.after.dimensions || {});
  const spread = dims.length > 1
    ? dims.map((d) => `${d} ${p.before.dimensions[d].spread_pp.toFixed(1)} → ${p.after.dimensions[d].spread_pp.toFixed(1)}`).join(", ")
    : `${p.before.spread_pp.toFixed(1)} → ${p.after.spread_pp.toFixed(1)}`;
  $("#plan-line").textContent = `${p.plan_id} · ${state} · ${p.outcome} · spread ${spread} pp · ${p.migrations.length} moves · ${gib.toFixed(1)} GiB · expected ${took}`;
  $("#approve").hidden = state !== "recommended";
  $("#moves tbody").replaceChildren(...view.moves.map((m) => {
    const s = (jobs.get(m.job_id) || {}).state || m.job_state || "not enqueued";
    return el("tr", { "data-vmid": m.vmid }, el("td", {}, `${m.name} (${m.id})`), el("td", {}, m.source), el("td", {}, m.target),
      el("td", {}, m.reason), el("td", {}, m.detail), el("td", { class: `state-${s}` }, s));
  }));
}

function renderJobs() {
  const rows = [...jobs.values()].sort((a, b) => (a.at < b.at ? 1 : -1)).slice(0, 100);
  $("#jobs tbody").replaceChildren(...rows.map((e) => el("tr", { "data-job": e.job_id, "data-vmid": e.vmid },
    el("td", {}, e.job_id), el("td", {}, String(e.vmid)), el("td", {}, e.source), el("td", {}, e.target),
    el("td", { class: `state-${e.state}` }, e.state), el("td", {}, e.message || ""), el("td", {}, new Date(e.at).toLocaleTimeString()))));
}

async function loadJobs() {
  const list = await api("/api/v1/jobs?limit=100").catch(() => []);
  for (const j of list) {
    if (!jobs.has(j.job_id)) jobs.set(j.job_id, { job_id: j.job_id, vmid: j.vmid, source: j.source, target: j.target, state: j.state, message: j.message, at: j.updated_at || j.created_at });
  }
  renderJobs();
}

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { refreshCluster(); refreshPlan(); }, 300);
}

async function stream() {
  let last = null;
  for (;;) {
    try {
      const headers = token() ? { Authorization: "Bearer " + token() } : {};
      if (last) headers["Last-Event-ID"] = last;
      const answer = await fetch("/api/v1/events", { headers });
      if (answer.status === 401) { await askToken(); continue; }
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

$("#pause").onclick = () => request("/api/v1/pause", "pause", { reason: "paused from the web page" });
$("#resume").onclick = () => request("/api/v1/resume", "resume");
$("#approve").onclick = () => plan && request(`/api/v1/plans/${plan.plan.plan_id}/approve`, `approve ${plan.plan.plan_id}`);

(async () => {
  await refreshCluster();
  await refreshPlan();
  await loadJobs();
  stream();
  setInterval(() => { refreshCluster(); refreshPlan(); }, 5000);
})();
