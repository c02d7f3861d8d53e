"""Bearer tokens: who is asking, and whether they may read or change anything.

Tokens are listed in `api.tokens`, each with a name (which becomes the "who" of the operator
requests it makes) and a read-only flag. A token is compared with every configured one in constant
time (hmac.compare_digest, no early exit), so response times do not tell how much of a guess was
right. Tokens are never logged: only the name of the token that matched is.

401 (with `WWW-Authenticate: Bearer`): no token where one is needed, or a token that matches none.
403: a read-only token on a request that changes something.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pvebalance.shared.config import ApiSettings

bearer = HTTPBearer(auto_error=False, description="a token from the config's api.tokens")


@dataclass(frozen=True)
class Caller:
    name: str
    read_only: bool


def identify(api: ApiSettings, token: str) -> Caller | None:
    """The configured token this one is, compared with each in constant time; None if it is none."""
    given = token.encode()
    found: Caller | None = None
    for entry in api.tokens:
        if hmac.compare_digest(given, entry.token.get_secret_value().encode()) and found is None:
            found = Caller(entry.name, entry.read_only)
    return found


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def caller(request: Request,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller | None:
    """The caller, or None when no token was sent; a token that matches none is refused here."""
    if credentials is None:
        return None
    found = identify(request.app.state.ctx.settings.api, credentials.credentials)
    if found is None:
        raise _unauthorized("the bearer token matches none in api.tokens")
    request.state.who = found.name  # for the access log line: the name, never the token
    return found


def reader(request: Request, who: Annotated[Caller | None, Depends(caller)]) -> Caller | None:
    if who is None and request.app.state.ctx.settings.api.read_requires_token:
        raise _unauthorized("reading needs 'Authorization: Bearer TOKEN' (api.read_requires_token is on)")
    return who


def writer(who: Annotated[Caller | None, Depends(caller)]) -> Caller:
    if who is None:
        raise _unauthorized("this request changes something: it needs 'Authorization: Bearer TOKEN'")
    if who.read_only:
        raise HTTPException(403, f"token '{who.name}' is read-only")
    return who


Reader = Annotated[Caller | None, Depends(reader)]
Writer = Annotated[Caller, Depends(writer)]
