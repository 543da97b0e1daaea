"""The NGSI-LD subscription API, ``/ngsi-ld/v1/subscriptions``.

Routes are added to the hub's router (imported by ``communs.hub.api``). Reading
subscriptions needs the same API key as writing: they hold endpoints and the headers
sent to them (``receiverInfo``), which may be credentials.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from communs.core.db import utcnow
from communs.hub import subscriptions
from communs.hub.api import (
    PREFIX,
    Writer,
    _page_links,
    arequest_terms,
    json_response,
    read_body,
    router,
)
from communs.hub.models import HubSubscription
from communs.hub.query import parse_limit


@router.post("/subscriptions", status_code=201)
@router.post("/subscriptions/", status_code=201, include_in_schema=False)
async def create_subscription(request: Request, tenant: Writer) -> Response:
    payload, terms, context = await read_body(request)
    parsed = subscriptions.parse_subscription(payload, terms)
    await request.app.state.db.awrite(subscriptions.create, tenant.commune_id, parsed, context)
    location = f"{PREFIX}/subscriptions/{parsed.wire['id']}"
    return Response(status_code=201, headers={"Location": location})


@router.get("/subscriptions")
@router.get("/subscriptions/", include_in_schema=False)
async def list_subscriptions(request: Request, tenant: Writer) -> Response:
    _terms, context = await arequest_terms(request)
    limit, offset = parse_limit(request.query_params)
    with request.app.state.db.read() as session:
        rows, total = subscriptions.listing(session, tenant.commune_id, limit=limit, offset=offset)
    headers = _page_links(request, offset, limit, len(rows), total)
    if request.query_params.get("count") == "true":
        headers["NGSILD-Results-Count"] = str(total)
    body = [render_subscription(row) for row in rows]
    return json_response(request, body, context, headers=headers)


@router.get("/subscriptions/{subscription_id:path}")
async def retrieve_subscription(request: Request, tenant: Writer, subscription_id: str) -> Response:
    _terms, context = await arequest_terms(request)
    with request.app.state.db.read() as session:
        row = subscriptions.get(session, tenant.commune_id, subscription_id)
    return json_response(request, render_subscription(row), context)


@router.patch("/subscriptions/{subscription_id:path}", status_code=204)
async def update_subscription(request: Request, tenant: Writer, subscription_id: str) -> Response:
    payload, terms, _context = await read_body(request)
    await request.app.state.db.awrite(
        subscriptions.update, tenant.commune_id, subscription_id, payload, terms
    )
    return Response(status_code=204)


@router.delete("/subscriptions/{subscription_id:path}", status_code=204)
async def delete_subscription(request: Request, tenant: Writer, subscription_id: str) -> Response:
    await request.app.state.db.awrite(subscriptions.delete, tenant.commune_id, subscription_id)
    return Response(status_code=204)


def render_subscription(row: HubSubscription) -> dict[str, Any]:
    """The subscription as given, with its status and delivery figures."""
    body = dict(row.document["wire"])
    context = row.document.get("context")
    if isinstance(context, str) and "jsonldContext" not in body:
        body["jsonldContext"] = context
    body["isActive"] = row.is_active
    body["status"] = subscriptions.status(row, utcnow())
    notification = dict(body["notification"])
    for member in subscriptions.STATUS_FIELDS:
        notification.pop(member, None)
    notification["timesSent"] = row.times_sent
    if row.times_failed:
        notification["timesFailed"] = row.times_failed
    for member, moment in (
        ("lastNotification", row.last_notification),
        ("lastSuccess", row.last_success),
        ("lastFailure", row.last_failure),
    ):
        if moment is not None:
            notification[member] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if row.last_notification is not None:
        failed = row.last_failure is not None and (
            row.last_success is None or row.last_failure > row.last_success
        )
        notification["status"] = "failed" if failed else "ok"
    body["notification"] = notification
    return body
