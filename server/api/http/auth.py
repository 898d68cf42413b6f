"""API keys at the HTTP front door (see `server.api.security`): probes open unless
`--auth-probes`, everything else needs `Authorization: Bearer KEY`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.responses import Response
from starlette.types import Scope

from server.api.http.exchange import json_response
from server.api.security import OPEN_HTTP_PATHS, OPEN_HTTP_PREFIXES, UNAUTHORIZED, ApiKeys, bearer


def http_guard(keys: ApiKeys, protect_probes: bool) -> Callable[[Scope], Awaitable[Response | None]]:
    """For the HTTP front door: None to let a request through, else the 401 to answer."""

    async def guard(scope: Scope) -> Response | None:
        path = scope.get("path", "")
        if not protect_probes and (path in OPEN_HTTP_PATHS or path.startswith(OPEN_HTTP_PREFIXES)):
            return None
        header = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), None)
        if keys.verify(bearer(header)):
            return None
        return json_response({"error": UNAUTHORIZED}, 401, {"WWW-Authenticate": 'Bearer realm="electra-serve"'})

    return guard
