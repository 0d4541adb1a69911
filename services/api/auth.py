"""Bearer-token rules of the api, from `[api]` in fep-ha.cfg.

- Operator actions (the handover) need `Authorization: Bearer <api token>`: 401 without a token, 403 with
  a wrong one. An empty `[api] token` disables actions altogether (403 saying so), so a node installed
  with the defaults cannot be steered by anyone who reaches its port.
- Reads are open when `[api] open_reads = true` (the default); otherwise they follow the same rules.
- /health and /ready are always open: Docker and keepalived ask them without credentials.
"""

from __future__ import annotations

import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fepha.config import NodeConfig

bearer = HTTPBearer(auto_error=False, description="the api token of fep-ha.cfg `[api] token` (FEP_API_TOKEN)")


def verify(cfg: NodeConfig, cred: HTTPAuthorizationCredentials | None, what: str) -> None:
    """Raise the 401/403 the rules above give for `cred`; return when it is the configured token."""
    if not cfg.api_token:
        raise HTTPException(403, f"{what} are disabled on this node: no api token is configured "
                                 f"([api] token in fep-ha.cfg, or FEP_API_TOKEN)")
    if cred is None or not cred.credentials:
        raise HTTPException(401, f"{what} need a bearer token: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(cred.credentials.encode("utf-8", "surrogateescape"),
                               cfg.api_token.encode("utf-8", "surrogateescape")):
        raise HTTPException(403, "wrong token")


def require_operator(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    verify(request.app.state.cfg, cred, "operator actions")


def require_reader(request: Request, cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    cfg: NodeConfig = request.app.state.cfg
    if not cfg.api_open_reads:
        verify(cfg, cred, "reads")
