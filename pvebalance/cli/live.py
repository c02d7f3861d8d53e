"""`pvebalance config check --live`: log in with the configured credentials, read what they may do
(`GET /access/permissions`), name each privilege the services need and do not have, and ask Redis.

One line per finding; the caller exits 2 when any is a problem. Nothing is changed anywhere.
"""

from __future__ import annotations

from pvebalance.shared.config import Settings
from pvebalance.shared.privileges import missing, names
from pvebalance.shared.proxmox import ProxmoxClient, ProxmoxError
from pvebalance.shared.redisconn import RedisUnavailable, connect


def check_live(settings: Settings) -> tuple[list[str], list[str]]:
    """(lines that are fine, problems), each one line."""
    ok: list[str] = []
    problems: list[str] = []
    api = settings.proxmox_api
    who = f"{api.user}!{api.token_id}" if api.token_id else api.user
    try:
        client = ProxmoxClient(api)
        version = client.get("/version")
        effective = client.get("/access/permissions")
    except ProxmoxError as exc:
        problems.append(f"proxmox_api: {exc.message}")
    else:
        release = version.get("version", "?") if isinstance(version, dict) else "?"
        ok.append(f"proxmox_api: logged in as {who} (Proxmox VE {release})")
        if not isinstance(effective, dict):
            problems.append(f"proxmox_api: /access/permissions answered {type(effective).__name__}, not PVE's "
                            "path -> privileges map")
        else:
            storage = settings.storage_balancing.enable
            lacking = missing(effective, storage)
            for need in lacking:
                problems.append(f"proxmox_api: {who} lacks {need.privilege} on {need.path}: {need.what_for}")
            if not lacking:
                granted = sorted(names(storage))
                ok.append(f"proxmox_api: privileges {', '.join(granted)}: every one the services need")
    try:
        connect(settings.redis.url).ping()
    except RedisUnavailable as exc:
        problems.append(f"redis: {exc}")
    else:
        ok.append("redis: answers")
    return ok, problems
