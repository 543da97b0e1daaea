"""The NGSI-LD temporal API, ``/ngsi-ld/v1/temporal/entities``: history of entities.

Routes are added to the hub's router (imported by ``communs.hub.api``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from communs.hub import history, service
from communs.hub.api import (
    PREFIX,
    Reader,
    Writer,
    arequest_terms,
    entity_query,
    json_response,
    read_body,
    router,
)
from communs.hub.context import TermMap
from communs.hub.document import (
    ENTITY_KEYS,
    check_name,
    check_uri,
    now_iso,
    parse_attribute,
    parse_types,
    stamp,
)
from communs.hub.errors import BadRequestData, ResourceNotFound
from communs.hub.query import parse_limit, split_list
from communs.hub.service import RawCursor
from communs.hub.temporal import (
    TemporalQuery,
    database_period,
    parse_temporal_query,
    render_number_aggregates,
    render_temporal_attribute,
)

MAX_INSTANCES = 10_000  # per attribute and datasetId in one response


@router.get("/temporal/entities")
async def query_temporal_entities(request: Request, tenant: Reader) -> Response:
    params = request.query_params
    terms, context = await arequest_terms(request)
    query = parse_temporal_query(params)
    limit, offset = parse_limit(params)
    types = tuple(terms.expand(name) for name in split_list(params.get("type")))
    ids = tuple(split_list(params.get("id")))
    attrs = _attributes(params, terms)
    filtered = bool(params.get("q") or params.get("georel"))
    if not (types or ids or attrs or filtered):
        raise BadRequestData("a temporal query needs type, id, attrs, q or georel")
    with request.app.state.db.read() as session:
        if filtered:
            ids = _selected_now(session, tenant.commune_id, params, terms)
        entities = (
            history.find_temporal_entities(
                session, tenant.commune_id, entity_ids=ids, types=types, limit=limit, offset=offset
            )
            if ids or not filtered
            else []
        )
        partial: list[tuple[int | None, int]] = []
        bodies = _temporal_bodies(
            session, entities, query, attrs, terms, params.get("lang"), partial
        )
    if attrs is not None:
        bodies = [body for body in bodies if len(body) > 2]
    return _paged_response(request, bodies, context, partial, query)


MAX_FILTERED = 10_000


def _selected_now(session: Any, commune_id: int, params: Any, terms: TermMap) -> tuple[str, ...]:
    """The entities that ``q`` and the geo-query select, tested on their current state
    (as Orion-LD does): an entity's history is returned whole when the entity matches
    now. Entities deleted since have no current state: these filters leave them out."""
    query, _attrs = entity_query(params, terms)
    documents, _total = service.query_entities(
        session, commune_id, query, limit=MAX_FILTERED, offset=0, count=False
    )
    return tuple(document["id"] for document in documents)


def _paged_response(
    request: Request,
    body: Any,
    context: Any,
    partial: list[tuple[int | None, int]],
    query: TemporalQuery,
) -> Response:
    """200, or 206 with a Content-Range (clause 6.3.17) when instances were left out:
    ask again with timeAt after the range's end for the rest."""
    if not partial:
        return json_response(request, body, context)
    first = min((start for start, _until in partial if start is not None), default=None)
    until = min(until for _start, until in partial)
    size = str(query.last_n) if query.last_n is not None else "*"
    start_text = history.from_micros(first) if first is not None else "*"
    headers = {"Content-Range": f"date-time {start_text}-{history.from_micros(until)}/{size}"}
    return json_response(request, body, context, status=206, headers=headers)


# Routes with a longer path come first: "{entity_id:path}" would swallow them.
@router.delete("/temporal/entities/{entity_id:path}/attrs/{attr_id}/{instance_id}", status_code=204)
async def delete_instance(
    request: Request, tenant: Writer, entity_id: str, attr_id: str, instance_id: str
) -> Response:
    terms, _context = await arequest_terms(request)
    deleted = await request.app.state.db.awrite(
        history.delete_instance,
        tenant.commune_id,
        entity_id,
        terms.expand(check_name(attr_id)),
        instance_id,
    )
    if not deleted:
        raise ResourceNotFound(f"no instance {instance_id} of {attr_id} in entity {entity_id}")
    return Response(status_code=204)


@router.patch("/temporal/entities/{entity_id:path}/attrs/{attr_id}/{instance_id}", status_code=204)
async def modify_instance(
    request: Request, tenant: Writer, entity_id: str, attr_id: str, instance_id: str
) -> Response:
    payload, terms, _context = await read_body(request)
    if not isinstance(payload, dict) or len(_attribute_names(payload)) != 1:
        raise BadRequestData("the body must hold exactly the attribute being modified")
    name = _attribute_names(payload)[0]
    iri = terms.expand(check_name(attr_id))
    if terms.expand(check_name(name)) != iri:
        raise BadRequestData(f"the body modifies {name!r}, the path names {attr_id!r}")
    instances = parse_attribute(name, payload[name], terms)
    if len(instances) != 1:
        raise BadRequestData("an instance is modified by exactly one attribute instance")
    modified = await request.app.state.db.awrite(
        history.modify_instance,
        tenant.commune_id,
        entity_id,
        iri,
        instance_id,
        instances[0],
        now_iso(),
    )
    if not modified:
        raise ResourceNotFound(f"no instance {instance_id} of {attr_id} in entity {entity_id}")
    return Response(status_code=204)


@router.delete("/temporal/entities/{entity_id:path}/attrs/{attr_id}", status_code=204)
async def delete_attribute_history(
    request: Request, tenant: Writer, entity_id: str, attr_id: str
) -> Response:
    params = request.query_params
    terms, _context = await arequest_terms(request)
    dataset_id = params.get("datasetId")
    if dataset_id is not None:
        check_uri(dataset_id, "datasetId")
    deleted = await request.app.state.db.awrite(
        history.delete_attribute_history,
        tenant.commune_id,
        entity_id,
        terms.expand(check_name(attr_id)),
        dataset_id=dataset_id,
        delete_all=params.get("deleteAll") == "true",
    )
    if not deleted:
        raise ResourceNotFound(f"no history of {attr_id} in entity {entity_id}")
    return Response(status_code=204)


@router.post("/temporal/entities/{entity_id:path}/attrs", status_code=204)
async def add_attribute_history(request: Request, tenant: Writer, entity_id: str) -> Response:
    """Add instances to the history of an entity's attributes."""
    payload, terms, _context = await read_body(request)
    if not isinstance(payload, dict):
        raise BadRequestData("the body must be a JSON object of attributes")
    with request.app.state.db.read() as session:
        found = history.find_temporal_entities(
            session, tenant.commune_id, entity_ids=(entity_id,), limit=1, offset=0
        )
    if not found:
        raise ResourceNotFound(f"no history for entity {entity_id}")
    body = {"id": entity_id, "type": list(found[0].types), **payload}
    changes = _changes(body, terms, types_expanded=True)
    await request.app.state.db.awrite(_record, tenant.commune_id, changes)
    return Response(status_code=204)


@router.get("/temporal/entities/{entity_id:path}")
async def retrieve_temporal_entity(request: Request, tenant: Reader, entity_id: str) -> Response:
    params = request.query_params
    terms, context = await arequest_terms(request)
    query = parse_temporal_query(params)
    attrs = _attributes(params, terms)
    with request.app.state.db.read() as session:
        found = history.find_temporal_entities(
            session, tenant.commune_id, entity_ids=(entity_id,), limit=1, offset=0
        )
        if not found:
            raise ResourceNotFound(f"no history for entity {entity_id}")
        partial: list[tuple[int | None, int]] = []
        (body,) = _temporal_bodies(session, found, query, attrs, terms, params.get("lang"), partial)
    return _paged_response(request, body, context, partial, query)


@router.post("/temporal/entities", status_code=201)
async def provide_history(request: Request, tenant: Writer) -> Response:
    """Create or add to an entity's history (e.g. importing past readings)."""
    payload, terms, _context = await read_body(request)
    changes = _changes(payload, terms)
    created = await request.app.state.db.awrite(_record, tenant.commune_id, changes)
    if not created:
        return Response(status_code=204)
    location = f"{PREFIX}/temporal/entities/{changes[0].entity_id}"
    return Response(status_code=201, headers={"Location": location})


@router.delete("/temporal/entities/{entity_id:path}", status_code=204)
async def delete_history(request: Request, tenant: Writer, entity_id: str) -> Response:
    deleted = await request.app.state.db.awrite(
        history.delete_temporal_entity, tenant.commune_id, entity_id
    )
    if not deleted:
        raise ResourceNotFound(f"no history for entity {entity_id}")
    return Response(status_code=204)


def _attribute_names(payload: dict[str, Any]) -> list[str]:
    return [name for name in payload if name not in ENTITY_KEYS]


def _attributes(params: Any, terms: TermMap) -> frozenset[str] | None:
    names = split_list(params.get("attrs"))
    return frozenset(terms.expand(check_name(name)) for name in names) or None


def _temporal_bodies(
    session: Any,
    entities: list[history.TemporalEntity],
    query: TemporalQuery,
    attrs: frozenset[str] | None,
    terms: TermMap,
    lang: str | None,
    partial: list[tuple[int | None, int]],
) -> list[dict[str, Any]]:
    aggregated = _number_aggregates(session, entities, query, attrs, terms)
    if aggregated is not None:
        return aggregated
    start, end = query.bounds()
    pages = history.histories(
        session,
        entities,
        attributes=attrs,
        start=start,
        end=end,
        by_modification=query.time_property in ("createdAt", "modifiedAt"),
        last_n=query.last_n,
        page_size=MAX_INSTANCES,
        values_only=query.form != "normalized" and query.time_property == "observedAt",
    )
    bodies = []
    for entity in entities:
        page = pages[entity.id]
        if page.until is not None:
            partial.append((page.first, page.until))
        body = _temporal_head(entity, terms)
        for iri, instances in page.instances.items():
            rendered = render_temporal_attribute(instances, query, terms, lang=lang)
            if rendered:
                body[terms.compact(iri)] = rendered
        bodies.append(body)
    return bodies


def _number_aggregates(
    session: Any,
    entities: list[history.TemporalEntity],
    query: TemporalQuery,
    attrs: frozenset[str] | None,
    terms: TermMap,
) -> list[dict[str, Any]] | None:
    """The bodies of an aggregation the database computes, None when it cannot."""
    period = database_period(query)
    if period is False:
        return None
    start, end = query.bounds()
    figures = history.number_aggregates(
        session,
        entities,
        attributes=attrs,
        start=start,
        end=end,
        period=period,
        distinct="distinctCount" in query.aggr_methods,
    )
    if figures is None:
        return None
    bodies = []
    for entity in entities:
        body = _temporal_head(entity, terms)
        for iri, series in figures[entity.id].items():
            body[terms.compact(iri)] = render_number_aggregates(
                series, query, periodic=period is not None
            )
        bodies.append(body)
    return bodies


def _temporal_head(entity: history.TemporalEntity, terms: TermMap) -> dict[str, Any]:
    types = [terms.compact(iri) for iri in entity.types]
    return {"id": entity.entity_id, "type": types[0] if len(types) == 1 else types}


def _changes(payload: Any, terms: TermMap, *, types_expanded: bool = False) -> list[history.Change]:
    if not isinstance(payload, dict):
        raise BadRequestData("a temporal entity must be a JSON object")
    entity_id = check_uri(payload.get("id"), "id")
    if "type" not in payload:
        raise BadRequestData("a temporal entity needs a type")
    types = tuple(payload["type"]) if types_expanded else tuple(parse_types(payload["type"], terms))
    now = now_iso()
    changes = []
    for name, raw in payload.items():
        if name in ENTITY_KEYS:
            continue
        iri = terms.expand(check_name(name))
        for item in raw if isinstance(raw, list) else [raw]:
            for instance in parse_attribute(name, item, terms):
                changes.append(history.Change(entity_id, types, iri, stamp(instance, now)))
    if not changes:
        raise BadRequestData("a temporal entity needs at least one attribute instance")
    return changes


def _record(session: Any, commune_id: int, changes: list[history.Change]) -> bool:
    """Record ``changes``; whether the entity had no history before."""
    raw = RawCursor(session)
    entity_id = changes[0].entity_id
    raw.execute(
        "SELECT 1 FROM hub_temporal_entities WHERE commune_id = ? AND entity_id = ?",
        (commune_id, entity_id),
    )
    is_new = raw.cursor.fetchone() is None
    history.record(raw, commune_id, changes)
    return is_new
