"""The web page in a real headless Chromium (Debian's, driven by Playwright; no browser download)
against `pvebalance api` serving a simulated cluster with the services running: the page asks for a
token (and says when one is refused), shows the nodes and the mode, asks before it drains a node,
and shows the jobs finishing, the node empty, the plan's notes and the request history; in manual
mode it rejects a plan with a reason and draws each node's usage over the last hours; on storage-3 with
storage balancing on it shows each shared storage's use and the plan's disk moves, and once approved the
jobs succeed and the storages show within the band.
Screenshots are kept in build/artefacts/ (api-page.png, api-confirm.png: docs/ shows copies)."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright
from redis import Redis

from pvebalance.shared import keys
from pvebalance.shared.jobstore import JobStore
from tests.api_helpers import OPS_TOKEN
from tests.api_live import LiveCluster, start_live, wait_for
from tests.helpers import REPO, SimFactory
from tests.unit.test_simulator import raw_api

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTEFACTS = REPO / "build" / "artefacts"


@pytest.fixture
def page() -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (.ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


@pytest.fixture
def live(start_simulator: SimFactory, real_redis: Redis, redis_url: str, tmp_path: Path) -> Iterator[LiveCluster]:
    # a memory threshold no node passes: a balancing plan says so in its notes (no moves: nothing to approve)
    cluster = start_live(start_simulator("homelab", time_scale=0.01), real_redis, redis_url, tmp_path, workers=2,
                         balancing={"memory_threshold": 95})
    yield cluster
    cluster.close()


def test_page_shows_the_nodes_drains_one_and_shows_its_jobs_finish_and_the_node_empty(
        page: Page, live: LiveCluster) -> None:
    requests_seen: list[str] = []
    page.on("request", lambda r: requests_seen.append(r.url))
    page.goto(live.url + "/")

    # Reads need a token: the page asks for it, says so when one is refused, and says nothing once one works.
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#message")).to_have_text("The API needs a token.")
    page.fill("#token-input", "not-the-token-0123456789")
    page.click("#token-form button")
    expect(page.locator("#message")).to_contain_text("The API refused this token")
    expect(page.locator("#token-form")).to_be_visible()
    page.fill("#token-input", OPS_TOKEN)
    page.click("#token-form button")
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#message")).to_have_text("")

    for node in ("pve1", "pve2", "pve3"):
        expect(page.locator(f'.node[data-node="{node}"]')).to_be_visible()
    expect(page.locator('.node[data-node="pve2"] .guests')).to_have_text("5 running, 1 stopped")
    expect(page.locator('.node[data-node="pve1"] .bar[data-resource="memory"]')).to_be_visible()
    expect(page.locator("#mode")).to_have_text("manual: plans wait for approval")  # start_live runs manual

    # Drain asks first; going back changes nothing.
    page.click('.node[data-node="pve3"] button.drain')
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-no")
    expect(page.locator("#confirm")).to_be_hidden()
    expect(page.locator("#message")).to_have_text("drain pve3: not done")
    assert live.redis.xlen(keys.REQUEST_STREAM) == 0
    running = live.guests_on("pve2", running_only=True)

    page.click('.node[data-node="pve2"] button.drain')
    expect(page.locator("#confirm-title")).to_have_text("Drain pve2?")
    expect(page.locator("#confirm-text")).to_contain_text("Every running guest on pve2 (5) is migrated to other nodes")
    expect(page.locator("#confirm-text")).to_contain_text("Its 1 stopped guest stays.")
    expect(page.locator("#confirm-reason-label")).to_be_hidden()  # a drain takes no reason
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "api-confirm.png"))
    page.click("#confirm-yes")

    expect(page.locator("#message")).to_contain_text("drain pve2: accepted", timeout=30_000)
    store = JobStore(live.redis)
    wait_for("the drain's jobs", lambda: bool(store.active_jobs()) or not live.guests_on("pve2", True), 30)
    expect(page.locator("#stream-state")).to_have_text("live")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(len(running), timeout=60_000)
    for vmid in running:
        expect(page.locator(f'#jobs tbody tr[data-vmid="{vmid}"] td.state-succeeded')).to_be_visible(timeout=90_000)
    expect(page.locator("#message")).to_contain_text("drain pve2: done \u2013 pve2 is empty", timeout=60_000)
    expect(page.locator('.node[data-node="pve2"] .guests')).to_have_text("0 running, 1 stopped", timeout=30_000)
    expect(page.locator('.node[data-node="pve2"] .tag.drained')).to_be_visible()
    expect(page.locator('.node[data-node="pve2"] button.undrain')).to_be_visible()

    # The history: the drain, done; the plan it made, with its notes.
    drained = page.locator('#requests tbody tr[data-action="drain"]')
    expect(drained).to_have_count(1)
    expect(drained).to_contain_text("pve2")
    expect(drained.locator("td.state-done")).to_be_visible()
    expect(page.locator("#plans tbody tr").first).to_be_visible()
    # the latest plan is the drain's, or one made after it (the memory threshold no node passes): its notes
    expect(page.locator("#plan-notes li").first).to_have_text(re.compile(
        r"^(a drain's plan: only the moves the rules ask for|no node above the memory threshold of 95)"))
    expect(page.locator("#approve")).to_be_hidden()  # a running, done or empty plan is not approvable
    expect(page.locator(f'#jobs tbody tr[data-vmid="{running[0]}"] td.elapsed')).to_have_text(re.compile(r"^\d+ s$"))

    page.click("#pause")
    expect(page.locator("#confirm-title")).to_have_text("Pause balancing?")
    expect(page.locator("#confirm-reason-label")).to_be_visible()
    page.fill("#confirm-reason", "backups")
    page.click("#confirm-yes")
    expect(page.locator("#message")).to_contain_text("pause: done", timeout=30_000)
    expect(page.locator("#cluster-line")).to_contain_text("PAUSED (backups)", timeout=15_000)
    assert live.redis.get(keys.PAUSED) is not None
    page.click("#resume")
    page.click("#confirm-yes")
    expect(page.locator("#message")).to_contain_text("resume: done", timeout=30_000)
    expect(page.locator("#cluster-line")).not_to_contain_text("PAUSED", timeout=15_000)
    expect(page.locator("#requests tbody tr")).to_have_count(3)

    assert live.guests_on("pve2", running_only=True) == []
    assert live.redis.hget(keys.DRAINED, "pve2") is not None
    assert all(r.startswith(live.url) for r in requests_seen), "the page loads nothing from outside the API"

    shot = ARTEFACTS / "api-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    for name in ("api-page.png", "api-confirm.png"):
        shutil.copy(ARTEFACTS / name, live.log_dir / name)


@pytest.fixture
def manual(start_simulator: SimFactory, real_redis: Redis, redis_url: str, tmp_path: Path) -> Iterator[LiveCluster]:
    cluster = start_live(start_simulator("homelab", time_scale=0.01), real_redis, redis_url, tmp_path)
    yield cluster
    cluster.close()


def test_page_rejects_a_recommended_plan_with_a_reason_and_draws_each_nodes_usage_over_the_last_hours(
        page: Page, manual: LiveCluster) -> None:
    # three hours of samples, one every 10 minutes, as the API's heartbeat would have recorded them
    # (in place of the one sample the API has taken since it started: one transaction, so none comes between)
    now_ms = int(time.time() * 1000) - 60_000
    seed = manual.redis.pipeline(transaction=True)
    seed.delete(keys.USAGE_HISTORY)
    for i in range(18, 0, -1):
        usage = {n: {"memory": 20.0 + i, "cpu": 10.0, "disk": 5.0} for n in ("pve1", "pve2", "pve3")}
        seed.xadd(keys.USAGE_HISTORY, {"usage": json.dumps(usage)}, id=f"{now_ms - i * 600_000}-0")
    seed.execute()
    page.goto(manual.url + "/")
    page.fill("#token-input", OPS_TOKEN)
    page.click("#token-form button")
    expect(page.locator('.node[data-node="pve1"] .spark[data-resource="memory"] polyline')).to_have_count(1)

    # manual mode: the balancing plan waits for approval, with Approve and Reject
    expect(page.locator("#approve")).to_be_visible(timeout=30_000)
    plan_id = page.locator("#plan-line").inner_text().split(" · ")[0]
    page.click("#reject")
    expect(page.locator("#confirm-title")).to_have_text(f"Reject {plan_id}?")
    expect(page.locator("#confirm-text")).to_contain_text("None of its")
    page.fill("#confirm-reason", "not during backups")
    page.click("#confirm-yes")
    expect(page.locator("#message")).to_contain_text(f"reject {plan_id}: done", timeout=30_000)
    row = page.locator(f'#plans tbody tr[data-plan="{plan_id}"]')
    expect(row).to_contain_text("rejected", timeout=15_000)
    expect(row).to_contain_text("not during backups")
    rejected = page.locator('#requests tbody tr[data-action="reject"]')
    expect(rejected).to_contain_text(plan_id)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "api-rejected.png"), full_page=True)


@pytest.fixture
def storage(start_simulator: SimFactory, real_redis: Redis, redis_url: str, tmp_path: Path) -> Iterator[LiveCluster]:
    # storage-3: three NFS storages at 90 / 51 / 24 %, nodes already balanced (the plan only moves disks)
    sim = start_simulator("storage-3", time_scale=0.002, figure_lag=0, host_variation=0)
    cluster = start_live(sim, real_redis, redis_url, tmp_path, workers=2, storage_balancing={"enable": True})
    yield cluster
    cluster.close()


def storage_percent(live: LiveCluster) -> dict[str, float]:
    """Each NFS storage's use as the simulator's own API reports it (the test's reading, not the API's)."""
    entries = raw_api(live.sim).cluster.resources.get(type="storage")
    return {e["storage"]: 100.0 * int(e["disk"]) / int(e["maxdisk"]) for e in entries if e["storage"].startswith("nfs")}


def test_page_shows_each_storages_use_the_plans_disk_moves_and_after_approval_the_storages_within_the_band(
        page: Page, storage: LiveCluster) -> None:
    live = storage
    before = storage_percent(live)
    page.goto(live.url + "/")
    page.fill("#token-input", OPS_TOKEN)
    page.click("#token-form button")

    # each shared storage once, with its use now; the local (per node) storage is not among them
    cards = page.locator(".storage")
    expect(cards).to_have_count(3)
    for sid, percent in before.items():
        expect(page.locator(f'.storage[data-storage="{sid}"] .percent')).to_have_text(f"{percent:.1f}%")
    expect(page.locator('.storage[data-storage="local-lvm"]')).to_have_count(0)

    # the recommended plan: its disk moves in order, with names and storages as the API gives them
    expect(page.locator("#approve")).to_be_visible(timeout=30_000)
    plan_id = page.locator("#plan-line").inner_text().split(" · ")[0]
    view = live.get(f"/api/v1/plans/{plan_id}").json()
    moves = [a for a in view["actions"] if a["kind"] == "move-disk"]
    assert moves and view["plan"]["storage"] is not None
    expect(page.locator('#moves tbody tr[data-kind="move-disk"]')).to_have_count(len(moves))
    for a in moves:
        row = page.locator(f'#moves tbody tr[data-job="{a["job_id"]}"]')
        expect(row.locator("td.what")).to_have_text(f"disk {a['disk']}")
        expect(row).to_contain_text(f"{a['name']} ({a['id']})")
        expect(row).to_contain_text(a["source"])
        expect(row).to_contain_text(a["target"])
        expect(row).to_contain_text(f"batch {a['batch']}")
    expect(page.locator("#plan-line")).to_contain_text(f"{len(moves)} disk moves")
    figures = view["plan"]["storage"]
    for sid, used in figures["before"].items():
        expect(page.locator(f'.storage[data-storage="{sid}"] .plan-figures')).to_have_text(
            f"{plan_id}: {used['percent']:.1f}% → {figures['after'][sid]['percent']:.1f}%")
    [group] = figures["groups"]
    expect(page.locator("#storage-line")).to_contain_text(
        f"nfs-a/nfs-b/nfs-c spread {group['spread_before_pp']:.1f} → {group['spread_after_pp']:.1f} pp")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / "api-storage-plan.png"), full_page=True)

    # approved: the dialog names the disk moves; the jobs end succeeded and the storages end within the band
    page.click("#approve")
    expect(page.locator("#confirm-text")).to_contain_text(f"{len(moves)} disks move to other storages")
    first = moves[0]
    expect(page.locator("#confirm-text")).to_contain_text(
        f"{first['vmid']} {first['disk']} {first['source']} → {first['target']}")
    page.click("#confirm-yes")
    expect(page.locator("#message")).to_contain_text(f"approve {plan_id}: done", timeout=30_000)
    for a in moves:
        job = page.locator(f'#jobs tbody tr[data-job="{a["job_id"]}"]')
        expect(job.locator("td.state-succeeded")).to_be_visible(timeout=180_000)
        expect(job).to_contain_text(f"{a['vmid']} {a['disk']}")
    after = storage_percent(live)
    assert max(after.values()) - min(after.values()) <= 10, after
    for sid, percent in after.items():  # the page follows the collector's next snapshots
        expect(page.locator(f'.storage[data-storage="{sid}"] .percent')).to_have_text(f"{percent:.1f}%",
                                                                                        timeout=30_000)
    page.screenshot(path=str(ARTEFACTS / "api-storage.png"), full_page=True)
