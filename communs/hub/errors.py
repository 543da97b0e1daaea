"""NGSI-LD errors as ProblemDetails (RFC 7807) with the ETSI error type URIs."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"


class NgsiError(Exception):
    type_name = "InternalError"
    status = 500
    title = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return ERRORS + self.type_name

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type_uri, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body


class BadRequestData(NgsiError):
    type_name, status, title = "BadRequestData", 400, "Bad request data"


class InvalidRequest(NgsiError):
    type_name, status, title = "InvalidRequest", 400, "Invalid request"


class ResourceNotFound(NgsiError):
    type_name, status, title = "ResourceNotFound", 404, "Resource not found"


class AlreadyExists(NgsiError):
    type_name, status, title = "AlreadyExists", 409, "Already exists"


class OperationNotSupported(NgsiError):
    type_name, status, title = "OperationNotSupported", 422, "Operation not supported"


class MethodNotAllowed(NgsiError):
    type_name, status, title = "OperationNotSupported", 405, "Method not allowed"


class TooManyResults(NgsiError):
    type_name, status, title = "TooManyResults", 403, "Too many results"


class LdContextNotAvailable(NgsiError):
    type_name, status, title = "LdContextNotAvailable", 503, "@context not available"


class NonExistingTenant(NgsiError):
    type_name, status, title = "NonExistingTenant", 404, "Non-existing tenant"


class UnsupportedMediaType(NgsiError):
    type_name, status, title = "InvalidRequest", 415, "Unsupported media type"


class NotAcceptable(NgsiError):
    type_name, status, title = "InvalidRequest", 406, "Not acceptable"


class Unauthorized(NgsiError):
    status, title = 401, "Unauthorized"

    @property
    def type_uri(self) -> str:
        return "about:blank"


class Forbidden(Unauthorized):
    status, title = 403, "Forbidden"


def problem_response(error: NgsiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return Response(
        orjson.dumps(error.problem()),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )
