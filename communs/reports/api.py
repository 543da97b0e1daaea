"""Open311 GeoReport v2 under ``/open311/v2`` (http://wiki.open311.org/GeoReport_v2).

``jurisdiction_id`` is the commune's slug (or INSEE code); it may be left out when the
instance serves one commune. Every endpoint answers ``.json`` and ``.xml``; errors are
Open311 error lists with 400, 403 or 404. Extensions, as FixMyStreet and other servers
offer them: ``page``/``page_size``, ``updated_after``/``updated_before``,
``extensions=true`` (channel, detailed status, photos, public history) and the
``servicerequestupdates`` feed for two-way synchronisation.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from xml.etree import ElementTree

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from communs.core import auth
from communs.core.db import utcnow
from communs.core.models import Commune
from communs.core.service import InvalidInput, list_communes
from communs.core.tenancy import commune_for_jurisdiction
from communs.reports import photos, service
from communs.reports.models import CLOSED, OPEN, Category, Channel, Report, ReportEvent, Status

PREFIX = "/open311/v2"
SPECIFICATION = "http://wiki.open311.org/GeoReport_v2"
DEFAULT_DAYS = 90
MAX_REQUESTS = 1000
FORMATS = {"json": "application/json", "xml": "text/xml; charset=utf-8"}
# XML element of each item of a list, by the list's name.
ITEM_NAMES = {
    "services": "service",
    "service_requests": "request",
    "service_request_updates": "request_update",
    "attributes": "attribute",
    "values": "value",
    "endpoints": "endpoint",
    "formats": "format",
    "errors": "error",
    "media_urls": "media_url",
    "history": "update",
}

router = APIRouter(prefix=PREFIX, tags=["open311"])


class Open311Error(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


# ---------------------------------------------------------------- rendering


def _format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise Open311Error(404, f"unknown format {fmt!r}: use .json or .xml")
    return fmt


def respond(fmt: str, root: str, body: Any, status: int = 200) -> Response:
    """``body`` as JSON, or as XML under ``root`` (lists repeat their item element)."""
    if fmt == "json":
        content = orjson.dumps(body)
    else:
        element = _element(root, body)
        content = b'<?xml version="1.0" encoding="utf-8"?>' + ElementTree.tostring(
            element, encoding="utf-8", xml_declaration=False
        )
    return Response(content, status_code=status, media_type=FORMATS[fmt])


def _element(name: str, value: Any) -> ElementTree.Element:
    element = ElementTree.Element(name)
    if isinstance(value, dict):
        for key, item in value.items():
            element.append(_element(key, item))
    elif isinstance(value, list):
        child = ITEM_NAMES.get(name, "item")
        for item in value:
            element.append(_element(child, item))
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = str(value)
    return element


def error_response(fmt: str, status: int, description: str) -> Response:
    return respond(fmt, "errors", [{"code": status, "description": description}], status)


async def on_open311_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, Open311Error)
    return error_response(_format_of(request.url.path), error.status, error.description)


async def on_routing_error(request: Request, error: StarletteHTTPException) -> Response:
    return error_response(_format_of(request.url.path), error.status_code, str(error.detail))


def _format_of(path: str) -> str:
    return "xml" if path.endswith(".xml") else "json"


EXCEPTION_HANDLERS = {Open311Error: on_open311_error}
HTTP_ERROR_HANDLERS = {PREFIX + "/": on_routing_error}


# ---------------------------------------------------------------- shared parameters


@auth.mark_access("open311")
async def jurisdiction(request: Request) -> Commune:
    """The commune of ``jurisdiction_id`` (query, or form of a POST). Reading is public;
    posting checks the ``api_key`` against this commune."""
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        form = await request.form(max_part_size=request.app.state.settings.upload_max_bytes)
        params.update((key, value) for key, value in form.items() if isinstance(value, str))
    with request.app.state.db.read() as session:
        return _commune(session, params)


Jurisdiction = Annotated[Commune, Depends(jurisdiction)]


def _commune(session: Any, params: Any) -> Commune:
    jurisdiction = params.get("jurisdiction_id")
    if jurisdiction:
        commune = commune_for_jurisdiction(session, jurisdiction)
        if commune is None:
            raise Open311Error(404, f"jurisdiction_id {jurisdiction!r} not found")
        return commune
    communes = list_communes(session)
    if len(communes) != 1:
        raise Open311Error(400, "jurisdiction_id is required: this endpoint serves several")
    return communes[0]


def _datetime(params: Any, name: str) -> dt.datetime | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        moment = dt.datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise Open311Error(
            400, f"{name} must be a W3C date-time, e.g. 2026-11-22T10:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _positive(params: Any, name: str, default: int, maximum: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise Open311Error(400, f"{name} must be a whole number from 1 to {maximum}")
    return int(raw)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


# ---------------------------------------------------------------- discovery and services


@router.get("/discovery.{fmt}", dependencies=[Depends(auth.public)])
async def discovery(request: Request, fmt: str) -> Response:
    fmt = _format(fmt)
    base = _base_url(request)
    return respond(
        fmt,
        "discovery",
        {
            "changeset": "2026-11-22T00:00:00Z",
            "contact": f"{base}/",
            "key_service": f"{base}/admin",
            "endpoints": [
                {
                    "specification": SPECIFICATION,
                    "url": base + PREFIX,
                    "changeset": "2026-11-22T00:00:00Z",
                    "type": "production",
                    "formats": ["application/json", "text/xml"],
                }
            ],
        },
    )


def service_json(category: Category, agency: str) -> dict[str, Any]:
    return {
        "service_code": category.code,
        "service_name": category.name,
        "description": category.description or None,
        "metadata": bool(category.attributes),
        "type": "realtime",
        "keywords": category.keywords or None,
        "group": category.group or None,
        "agency_responsible": agency,
    }


@router.get("/services.{fmt}")
async def list_services(request: Request, commune: Jurisdiction, fmt: str) -> Response:
    fmt = _format(fmt)
    with request.app.state.db.read() as session:
        agencies = service.service_names(session, commune.id)
        body = [
            service_json(category, agencies.get(category.service_id, ""))
            for category in service.categories(session, commune.id)
        ]
    return respond(fmt, "services", body)


@router.get("/services/{code}.{fmt}")
async def service_definition(
    request: Request, commune: Jurisdiction, code: str, fmt: str
) -> Response:
    fmt = _format(fmt)
    with request.app.state.db.read() as session:
        category = service.category_by_code(session, commune.id, code)
        if category is None or not category.is_active:
            raise Open311Error(404, f"service_code {code!r} not found")
    attributes = [
        {key: value for key, value in attribute.items() if key != "values"}
        | {"values": [{"key": v["key"], "name": v["name"]} for v in attribute["values"]]}
        for attribute in category.attributes
    ]
    return respond(
        fmt, "service_definition", {"service_code": category.code, "attributes": attributes}
    )


# ---------------------------------------------------------------- requests


def request_json(
    report: Report,
    category: Category | None,
    agency: str,
    media_url: str | None = None,
    events: list[ReportEvent] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service_request_id": str(report.id),
        "status": service.open311_status(report.status),
        "status_notes": report.status_notes or None,
        "service_name": category.name if category else None,
        "service_code": category.code if category else "",
        "description": report.description,
        "agency_responsible": agency or None,
        "service_notice": (category.notice or None) if category else None,
        "requested_datetime": service.w3c_time(report.requested_at),
        "updated_datetime": service.w3c_time(report.updated_at),
        "expected_datetime": service.w3c_time(report.expected_at),
        "address": report.address or None,
        "address_id": None,
        "zipcode": None,
        "lat": report.lat,
        "long": report.lon,
        "media_url": media_url,
    }
    if events is not None:
        body["extended_attributes"] = {
            "channel": report.channel,
            "detailed_status": report.status,
            "duplicate_of": str(report.duplicate_of_id) if report.duplicate_of_id else None,
            "history": [
                {
                    "update_id": str(event.id),
                    "status": service.open311_status(event.status),
                    "detailed_status": event.status,
                    "description": event.text or None,
                    "updated_datetime": service.w3c_time(event.created_at),
                }
                for event in events
            ],
        }
    return body


@router.get("/requests.{fmt}")
async def list_requests(request: Request, commune: Jurisdiction, fmt: str) -> Response:
    fmt = _format(fmt)
    params = request.query_params
    wanted = _filter(params)
    with request.app.state.db.read() as session:
        reports = service.find_reports(session, commune.id, wanted)
        body = _requests_body(request, session, commune, reports, params)
    return respond(fmt, "service_requests", body)


def _filter(params: Any) -> service.ReportFilter:
    ids = tuple(_ids(params.get("service_request_id", "")))
    codes = tuple(code for code in params.get("service_code", "").split(",") if code.strip())
    statuses = _statuses(params.get("status", ""))
    start, end = _datetime(params, "start_date"), _datetime(params, "end_date")
    updated_after = _datetime(params, "updated_after")
    updated_before = _datetime(params, "updated_before")
    page_size = _positive(params, "page_size", MAX_REQUESTS, MAX_REQUESTS)
    page = _positive(params, "page", 1, 10**6)
    if not ids and start is None and end is None and updated_after is None:
        start = utcnow() - dt.timedelta(days=DEFAULT_DAYS)  # the spec's default window
    return service.ReportFilter(
        ids=ids,
        category_codes=codes if not ids else (),
        statuses=statuses if not ids else (),
        requested_from=start if not ids else None,
        requested_until=end if not ids else None,
        updated_after=updated_after,
        updated_before=updated_before,
        offset=(page - 1) * page_size,
        limit=page_size,
    )


def _ids(raw: str) -> list[int]:
    ids = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit():
            raise Open311Error(400, f"service_request_id {item!r} is not a request number")
        ids.append(int(item))
    return ids


def _statuses(raw: str) -> tuple[str, ...]:
    wanted: list[str] = []
    for item in (part.strip() for part in raw.split(",")):
        if item == "open":
            wanted.extend(OPEN)
        elif item == "closed":
            wanted.extend(CLOSED)
        elif item in Status.__members__.values():
            wanted.append(item)
        elif item:
            raise Open311Error(400, f"status {item!r}: use open or closed")
    return tuple(dict.fromkeys(wanted))


def _requests_body(
    request: Request, session: Any, commune: Commune, reports: list[Report], params: Any
) -> list[dict[str, Any]]:
    categories = service.categories_by_id(session, commune.id)
    agencies = service.service_names(session, commune.id)
    ids = [report.id for report in reports]
    photo_ids = service.visible_photo_ids(session, commune.id, ids)
    history = (
        service.public_events(session, commune.id, ids)
        if params.get("extensions") == "true"
        else None
    )
    base = _base_url(request)
    bodies = []
    for report in reports:
        urls = [photo_url(base, commune.slug, report.id, photo) for photo in photo_ids[report.id]]
        body = request_json(
            report,
            categories.get(report.category_id),
            agencies.get(report.service_id, ""),
            urls[0] if urls else None,
            history[report.id] if history is not None else None,
        )
        if history is not None:
            body["extended_attributes"]["media_urls"] = urls
        bodies.append(body)
    return bodies


def photo_url(base: str, slug: str, report_id: int, photo_id: int) -> str:
    return f"{base}/{slug}/signalements/{report_id}/photos/{photo_id}.jpg"


@router.get("/requests/{request_id}.{fmt}")
async def get_request(
    request: Request, commune: Jurisdiction, request_id: str, fmt: str
) -> Response:
    fmt = _format(fmt)
    params = request.query_params
    with request.app.state.db.read() as session:
        report = (
            service.get_report(session, commune.id, int(request_id))
            if request_id.isdigit()
            else None
        )
        if report is None or report.hidden or not report.confirmed:
            raise Open311Error(404, f"service_request_id {request_id!r} not found")
        body = _requests_body(request, session, commune, [report], params)
    return respond(fmt, "service_requests", body)


@router.get("/tokens/{token}.{fmt}")
async def get_token(request: Request, commune: Jurisdiction, token: str, fmt: str) -> Response:
    """Requests are created at once: a token is the request's own number."""
    fmt = _format(fmt)
    with request.app.state.db.read() as session:
        report = service.get_report(session, commune.id, int(token)) if token.isdigit() else None
        if report is None:
            raise Open311Error(404, f"token {token!r} not found")
    return respond(
        fmt, "service_requests", [{"service_request_id": str(report.id), "token": token}]
    )


@router.post("/requests.{fmt}")
async def post_request(request: Request, commune: Jurisdiction, fmt: str) -> Response:
    fmt = _format(fmt)
    form = await request.form(max_part_size=request.app.state.settings.upload_max_bytes)
    params = {key: value for key, value in form.items() if isinstance(value, str)}
    params.update({k: v for k, v in request.query_params.items() if k not in params})
    key = _api_key(request, params)
    if key is None or key.commune_id != commune.id or "reports:write" not in key.scopes:
        raise Open311Error(403, "api_key is missing, invalid, or not allowed for this jurisdiction")
    if not params.get("service_code", "").strip():
        raise Open311Error(400, "service_code is required")
    try:
        submission = service.Submission(
            category_code=params["service_code"],
            description=params.get("description", ""),
            lon=_coordinate(params, "long"),
            lat=_coordinate(params, "lat"),
            address=params.get("address_string", ""),
            answers=_answers(form),
            email=params.get("email", ""),
            first_name=params.get("first_name", ""),
            last_name=params.get("last_name", ""),
            phone=params.get("phone", ""),
            device_id=params.get("device_id", ""),
            channel=Channel.OPEN311,
            photos=await photos.read_uploads(form.getlist("media")),
        )
        report = await request.app.state.db.awrite(service.create_report, commune.id, submission)
    except InvalidInput as error:
        raise Open311Error(400, f"{error.field or 'request'}: {error}") from None
    with request.app.state.db.read() as session:
        category = service.category_by_code(session, commune.id, submission.category_code)
    notice = category.notice if category is not None else ""
    body = [
        {"service_request_id": str(report.id), "service_notice": notice or None, "account_id": None}
    ]
    return respond(fmt, "service_requests", body, status=201)


def _api_key(request: Request, params: dict[str, str]) -> Any:
    secret = params.get("api_key") or auth._bearer(request)
    return auth.api_key(request, secret) if secret else None


def _coordinate(params: dict[str, str], name: str) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise Open311Error(400, f"{name} must be a number") from None


def _answers(form: Any) -> dict[str, Any]:
    """``attribute[code]=value``; ``attribute[code][]`` (or repeated) for lists."""
    answers: dict[str, Any] = {}
    for key in form:
        if not key.startswith("attribute[") or "]" not in key:
            continue
        code = key[len("attribute[") : key.index("]")]
        values = [value for value in form.getlist(key) if isinstance(value, str)]
        answers[code] = values if key.endswith("[]") or len(values) > 1 else values[0]
    return answers


@router.get("/servicerequestupdates.{fmt}")
async def request_updates(request: Request, commune: Jurisdiction, fmt: str) -> Response:
    """Public changes of requests, oldest first (FixMyStreet's update feed)."""
    fmt = _format(fmt)
    params = request.query_params
    after = _datetime(params, "start_date") or _datetime(params, "updated_after")
    before = _datetime(params, "end_date") or _datetime(params, "updated_before")
    limit = _positive(params, "page_size", MAX_REQUESTS, MAX_REQUESTS)
    with request.app.state.db.read() as session:
        events = service.updates_since(session, commune.id, after=after, before=before, limit=limit)
    body = [
        {
            "update_id": str(event.id),
            "service_request_id": str(event.report_id),
            "status": service.open311_status(event.status),
            "detailed_status": event.status,
            "description": event.text or None,
            "updated_datetime": service.w3c_time(event.created_at),
            "media_url": None,
        }
        for event in events
    ]
    return respond(fmt, "service_request_updates", body)
