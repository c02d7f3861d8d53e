"""POST /api/v1/placement: the best node for a new guest, as `pvebalance best-node --json` answers.

The engine's answer (pvebalance.engine.placement) on the collector's latest snapshot and the
operator's policy: the best node, the runner-ups ranked, and why each other node is refused. It
changes nothing, so a reading token is enough (Terraform or Ansible ask it before creating a VM).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from pvebalance.engine.placement import PlacementAnswer, PlacementRequest, place

from .auth import Reader
from .routes_read import NEEDS_TOKEN, ctx
from .usage import policy_for

router = APIRouter(prefix="/api/v1", tags=["read"])


@router.post("/placement", response_model=PlacementAnswer,
             responses={**NEEDS_TOKEN, 503: {"description": "no snapshot yet"}})
def placement(request: Request, guest: PlacementRequest, _: Reader) -> PlacementAnswer:
    """`best` is null when no node may take the guest; `reason` then says why, and `refused` per node."""
    context = ctx(request)
    snapshot = context.read.snapshot()
    if snapshot is None:
        raise HTTPException(503, "no cluster snapshot yet: is the collector running?")
    return place(snapshot, policy_for(context.settings), guest)
