"""Optional API key: with ``CAPTIONER_API_KEY`` set, every ``/v1/*`` route needs
``Authorization: Bearer <key>``. The comparison takes constant time (hmac.compare_digest),
so response timing reveals nothing about the key. Health, readiness, metrics and the
upload page stay open (protect /metrics at the network level if it matters).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import APIError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="captioner"'}
#: Declares the scheme in the OpenAPI document (components.securitySchemes); the check is below.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="'Authorization: Bearer <key>' when the server has CAPTIONER_API_KEY set (else 401)",
)


async def require_api_key(
    request: Request, _declared: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None
) -> None:
    """FastAPI dependency: 401 unless the request carries the configured key."""
    key = request.app.state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise APIError(
            401, "unauthorized", "this server requires an API key: send 'Authorization: Bearer <key>'", CHALLENGE
        )
    expected = key.get_secret_value().encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8"), expected):
        raise APIError(401, "unauthorized", "the API key is wrong; send 'Authorization: Bearer <key>'", CHALLENGE)
