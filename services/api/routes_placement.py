"""POST /api/v1/placement: the best node for a new guest, as `pvebalance best-node --json` answers.

The engine's answer (pvebalance.engine.placement) on the collector's latest snapshot and the
operator's policy: the best node, the runner-ups ranked, and why each other node is refused. It
changes nothing, so a reading token is enough (Terraform or Ansible ask it before creating a VM).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request

from pvebalance.engine.placement import PlacementAnswer, PlacementRequest, place

from .auth import Reader
from .jsontypes import JsonTyped
from .routes_read import NEEDS_TOKEN, ctx

router = APIRouter(prefix="/api/v1", tags=["read"])


class PlacementBody(PlacementRequest, JsonTyped):
    """The engine's request, read by JSON's types: a JSON "8" is not a number of bytes."""


@router.post("/placement", response_model=PlacementAnswer,
             responses={**NEEDS_TOKEN, 400: {"description": "a body that cannot be read at all (not UTF-8 JSON)"},
                        503: {"description": "no snapshot yet"}})
def placement(request: Request, guest: PlacementBody, _: Reader) -> PlacementAnswer:
    """`best` is null when no node may take the guest; `reason` then says why, and `refused` per node."""
    context = ctx(request)
    snapshot = context.read.snapshot()
    if snapshot is None:
        raise HTTPException(503, "no cluster snapshot yet: is the collector running?")
    return place(snapshot, context.read.policy(), guest)
