// The page's Storages section: each shared storage's use (GET /api/v1/cluster `storages`) and the latest
// plan's storage figures (`plan.storage`). Loaded before app.js, whose helpers (el, pct, list, $) and state
// (cluster, plan) these functions read when they run.
"use strict";

function gib(bytes) { return (bytes / 2 ** 30).toFixed(bytes >= 100 * 2 ** 30 ? 0 : 1); }

// A shared storage: its use now (the cluster view) and, while the latest plan is live and balances it, after
// the plan's disk moves (the plan's own figures: plan.storage, as `pvebalance plan --storage` shows them).
const LIVE = ["recommended", "approved", "running"];
function storageCard(s, figures) {
  const state = plan && plan.status ? plan.status.state : "";
  const live = figures && LIVE.includes(state);
  const before = figures ? figures.before[s.storage] : null, after = live ? figures.after[s.storage] : null;
  const card = el("div", { class: "node storage", "data-storage": s.storage });
  const title = el("h3", {}, s.storage);
  if (figures && s.percent !== null && s.percent > figures.max_usage) title.append(el("span", { class: "tag" }, `above ${figures.max_usage}%`));
  if (!s.nodes.length) title.append(el("span", { class: "tag" }, "available on no node"));
  card.append(title);
  const now = s.percent;
  const track = el("div", { class: "track" },
    el("div", { class: "now", style: `width:${Math.min(now ?? 0, 100)}%` }),
    el("div", { class: "after", style: `width:${Math.min(after ? after.percent : now ?? 0, 100)}%` }));
  card.append(el("div", { class: "bar", "data-resource": "used", title: `now ${pct(now)}${after ? `, after the plan ${pct(after.percent)}` : ""}` },
    el("span", {}, "used"), track, el("span", { class: "percent" }, pct(now))));
  if (before) {
    card.append(el("div", { class: "muted plan-figures" },
      `${plan.plan.plan_id}: ${pct(before.percent)} → ${pct(figures.after[s.storage].percent)}${live ? "" : ` (${state || "state unknown"})`}`));
  }
  card.append(el("div", { class: "muted" }, `${gib(s.used)} of ${gib(s.total)} GiB · on ${s.nodes.join(", ") || "no node"} · ${s.content.join(", ")}`));
  return card;
}

function renderStorages() {
  const storages = (cluster && cluster.storages) || [];
  const figures = plan ? plan.plan.storage : null;
  $("#storage-section").hidden = storages.length === 0;
  $("#storages").replaceChildren(...storages.map((s) => storageCard(s, figures)));
  $("#storage-line").textContent = figures
    ? `${figures.groups.map((g) => `${g.storages.join("/")} spread ${g.spread_before_pp.toFixed(1)} → ${g.spread_after_pp.toFixed(1)} pp`).join(", ")}`
      + ` (balanciness ${figures.band_pp} pp, none above ${figures.max_usage}%)`
    : "";
  const stays = figures ? figures.stays : [];
  list("#storage-stays", stays.length > 10 ? [...stays.slice(0, 10), `and ${stays.length - 10} more disks stay`] : stays);
}
