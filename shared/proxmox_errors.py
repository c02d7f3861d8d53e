"""The Proxmox client's errors, apart from the client: what a failed call was, in one line, and whether it
is worth retrying. Light to import (the kinds of action judge PVE's answers with it; the plan's models
are built from those, and the engine reads them without loading requests or proxmoxer)."""

from __future__ import annotations

from .errors import OperatorError

NO_ANSWER, MALFORMED, AUTH, TLS, REFUSED = "no-answer", "malformed", "auth", "tls", "refused"
# Statuses of a proxy or gateway between us and the node that runs the request: it may have run.
GATEWAY_STATUSES = (502, 503, 504, 595, 596)


class ProxmoxError(OperatorError):
    """An API call that failed; `status` is the HTTP status (None when no host answered)."""

    def __init__(self, message: str, status: int | None = None, host: str | None = None,
                 kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.host = host
        self.kind = kind or (AUTH if status == 401 else REFUSED if status is not None else NO_ANSWER)

    @property
    def auth(self) -> bool:
        return self.kind == AUTH

    @property
    def ambiguous(self) -> bool:
        """The request may have been carried out although it failed: no answer, a garbled one, a gateway."""
        return self.kind in (NO_ANSWER, MALFORMED) or self.status in GATEWAY_STATUSES

    @property
    def transient(self) -> bool:
        """Worth retrying: no answer, a garbled answer, a gateway or offline-node status, or a 500 that is
        not a refusal."""
        if self.kind in (NO_ANSWER, MALFORMED):
            return True
        if self.kind in (AUTH, TLS):
            return False
        if self.status in GATEWAY_STATUSES:
            return True
        if self.status != 500:
            return False
        text = self.message.lower()
        return not any(p in text for p in _PERMANENT_500)


# 500 answers that no retry will change: PVE refused the request itself.
_PERMANENT_500 = (
    "does not exist", "no such", "can't migrate", "cannot migrate", "not allowed",
    "not implemented", "target is local node", "permission",
)
