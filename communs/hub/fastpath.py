"""The hottest NGSI-LD routes served without the framework's routing and dependency layers.

Devices update attributes thousands of times a second; on two cores the generic
routing and dependency resolution cost more than the update itself. This ASGI layer
recognises those few routes and calls the very same endpoint functions and access
checks (``tenant_writer``/``tenant_reader``) that the declared routes use, so
behaviour, errors and tenancy are identical; every other request passes through.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from communs.hub import api
from communs.hub.errors import NgsiError, problem_response

Endpoint = Callable[..., Awaitable[Response]]

ROUTES: list[tuple[str, re.Pattern[str], Callable[[Request], Awaitable[Any]], Endpoint]] = [
    (
        "PATCH",
        re.compile(r"^/ngsi-ld/v1/entities/(?P<entity_id>[^/]+)/attrs$"),
        api.tenant_writer,
        api.update_attributes,
    ),
    (
        "POST",
        re.compile(r"^/ngsi-ld/v1/entityOperations/upsert$"),
        api.tenant_writer,
        api.batch_upsert,
    ),
    (
        "GET",
        re.compile(r"^/ngsi-ld/v1/entities/(?P<entity_id>[^/]+)$"),
        api.tenant_reader,
        api.retrieve_entity,
    ),
    ("GET", re.compile(r"^/ngsi-ld/v1/entities$"), api.tenant_reader, api.query_entities),
]
HEADERS = [(b"x-content-type-options", b"nosniff")]


class HubFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/ngsi-ld/v1/"):
            for method, pattern, access, endpoint in ROUTES:
                if scope["method"] == method and (match := pattern.match(scope["path"])):
                    response = await self._handle(scope, receive, access, endpoint, match)
                    response.raw_headers.extend(HEADERS)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _handle(
        scope: Scope, receive: Receive, access: Any, endpoint: Endpoint, match: re.Match[str]
    ) -> Response:
        request = Request(scope, receive)
        try:
            tenant = await access(request)
            return await endpoint(request, tenant, **match.groupdict())
        except NgsiError as error:
            return problem_response(error)


FastPath = HubFastPath
