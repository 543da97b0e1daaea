"""The NGSI-LD API under ``/ngsi-ld/v1``: entities and their attributes."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from communs.core.auth import LoginRequired, load_principal, mark_access
from communs.core.cache import TtlCache
from communs.core.service import list_communes
from communs.core.tenancy import NGSILD_TENANT_HEADER, commune_for_ngsild_tenant
from communs.hub import service
from communs.hub.context import (
    DEFAULT_CORE_CONTEXT_URL,
    ContextNotAvailable,
    InvalidContext,
    TermMap,
    cached_term_map,
    term_map,
)
from communs.hub.document import (
    parse_attribute,
    parse_attributes,
    parse_entity,
    parse_types,
    render_entity,
)
from communs.hub.errors import (
    BadRequestData,
    Forbidden,
    InvalidRequest,
    LdContextNotAvailable,
    MethodNotAllowed,
    NgsiError,
    NonExistingTenant,
    NotAcceptable,
    ResourceNotFound,
    Unauthorized,
    UnsupportedMediaType,
    problem_response,
)
from communs.hub.geoquery import GeoQuerySyntaxError, parse_geoquery
from communs.hub.query import parse_limit, parse_options, parse_type_selection, split_list
from communs.hub.query_language import (
    QuerySyntaxError,
    bind,
    matches,
    parse_q,
    parse_scope_q,
    scope_matches,
)

PREFIX = "/ngsi-ld/v1"
JSON_LD = "application/ld+json"
GEO_JSON = "application/geo+json"
CONTEXT_REL = "http://www.w3.org/ns/json-ld#context"

router = APIRouter(prefix=PREFIX, tags=["ngsi-ld"])


@dataclass(frozen=True)
class Tenant:
    commune_id: int
    slug: str


def _tenant(request: Request) -> Tenant:
    header = request.headers.get(NGSILD_TENANT_HEADER)
    state = request.app.state
    if not hasattr(state, "hub_tenants"):
        state.hub_tenants = TtlCache(ttl=10)
    tenant = state.hub_tenants.get_or_load(header, lambda: _find_tenant(request, header))
    if tenant is None:
        raise NonExistingTenant(f"tenant {header or '(default)'} does not exist")
    return tenant


def _find_tenant(request: Request, header: str | None) -> Tenant | None:
    default = request.app.state.settings.hub_default_tenant
    with request.app.state.db.read() as session:
        commune = commune_for_ngsild_tenant(session, header, default)
        if commune is None and not header and not default:
            communes = list_communes(session)
            commune = communes[0] if len(communes) == 1 else None
    return None if commune is None else Tenant(commune.id, commune.slug)


@mark_access("ngsild_read")
async def tenant_reader(request: Request) -> Tenant:
    """Reading the hub is open; the tenant header chooses the commune."""
    return _tenant(request)


@mark_access("ngsild_write")
async def tenant_writer(request: Request) -> Tenant:
    """Writing needs an API key of that commune with ``hub:write`` (unless open writes)."""
    tenant = _tenant(request)
    if request.app.state.settings.hub_open_writes:
        return tenant
    try:
        principal = load_principal(request)
    except LoginRequired as error:
        raise Unauthorized("invalid API key") from error
    if principal.api_key is None:
        raise Unauthorized("an API key (Authorization: Bearer …) is needed to write")
    if not principal.has_scope(tenant.commune_id, "hub:write"):
        raise Forbidden("this API key cannot write to this tenant")
    return tenant


Reader = Annotated[Tenant, Depends(tenant_reader)]
Writer = Annotated[Tenant, Depends(tenant_writer)]


# ---------------------------------------------------------------- content negotiation


def _link_context(request: Request) -> str | None:
    for part in request.headers.get("link", "").split(","):
        if CONTEXT_REL in part and "<" in part and ">" in part:
            return part[part.index("<") + 1 : part.index(">")].strip()
    return None


def _terms(request: Request, context: Any) -> TermMap:
    try:
        return term_map(context, contexts.loader_for(request.app))
    except ContextNotAvailable as error:
        raise LdContextNotAvailable(f"@context {error} could not be retrieved") from error
    except InvalidContext as error:
        raise BadRequestData(f"invalid @context: {error}") from error


async def read_body(request: Request) -> tuple[Any, TermMap, Any]:
    """The JSON payload, the term map of its @context, and that context."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("application/json", JSON_LD):
        raise UnsupportedMediaType(f"Content-Type must be application/json or {JSON_LD}")
    try:
        payload = orjson.loads(await request.body())
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}") from error
    items = payload if isinstance(payload, list) else [payload]
    if media_type == JSON_LD:
        contexts = [item.get("@context") for item in items if isinstance(item, dict)]
        if not contexts or any(c is None for c in contexts):
            raise BadRequestData(f"{JSON_LD} bodies must carry an @context")
        if _link_context(request):
            raise BadRequestData(f"a Link @context header is not allowed with {JSON_LD}")
        context = contexts[0]
    else:
        if any(isinstance(item, dict) and "@context" in item for item in items):
            raise BadRequestData("application/json bodies carry their @context in a Link header")
        context = _link_context(request)
    return payload, await _aterms(request, context), context


async def _aterms(request: Request, context: Any) -> TermMap:
    """``_terms`` for async routes: a context that must be loaded (perhaps fetched, up to
    a few seconds) is resolved in a worker thread, never on the event loop."""
    cached = cached_term_map(context)
    if cached is not None:
        return cached
    return await asyncio.to_thread(_terms, request, context)


def request_terms(request: Request) -> tuple[TermMap, Any]:
    """For routes that run in a worker thread."""
    context = _link_context(request)
    return _terms(request, context), context


async def arequest_terms(request: Request) -> tuple[TermMap, Any]:
    context = _link_context(request)
    return await _aterms(request, context), context


def _accepted(request: Request) -> str:
    accept = request.headers.get("accept", "*/*").lower()
    for media_type in (JSON_LD, GEO_JSON, "application/json"):
        if media_type in accept:
            return media_type
    if "*/*" in accept or "application/*" in accept or not accept.strip():
        return "application/json"
    raise NotAcceptable(
        "acceptable types: application/json, application/ld+json, application/geo+json"
    )


def json_response(
    request: Request,
    body: Any,
    context: Any,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
    media_type: str | None = None,
) -> Response:
    media_type = media_type or _accepted(request)
    headers = dict(headers or {})
    context_url = context if isinstance(context, str) else DEFAULT_CORE_CONTEXT_URL
    if media_type == JSON_LD:
        items = body if isinstance(body, list) else [body]
        for item in items:
            item["@context"] = context if context is not None else DEFAULT_CORE_CONTEXT_URL
    else:
        context_link = f'<{context_url}>; rel="{CONTEXT_REL}"; type="{JSON_LD}"'
        headers["Link"] = ", ".join(filter(None, [context_link, headers.get("Link")]))
    return Response(orjson.dumps(body), status, headers=headers, media_type=media_type)


# ---------------------------------------------------------------- entities


@router.post("/entities", status_code=201)
@router.post("/entities/", status_code=201, include_in_schema=False)
async def create_entity(request: Request, tenant: Writer) -> Response:
    payload, terms, _context = await read_body(request)
    entity = parse_entity(payload, terms)
    await request.app.state.db.awrite(service.create_entity, tenant.commune_id, entity)
    return Response(status_code=201, headers={"Location": f"{PREFIX}/entities/{entity['id']}"})


@router.get("/entities")
@router.get("/entities/", include_in_schema=False)
async def query_entities(request: Request, tenant: Reader) -> Response:
    terms, context = await arequest_terms(request)
    return await _run_query(request, tenant, request.query_params, terms, context)


async def _run_query(
    request: Request, tenant: Tenant, params: Any, terms: TermMap, context: Any
) -> Response:
    media_type = _accepted(request)
    form, sys_attrs = parse_options(params)
    limit, offset = parse_limit(params)
    query, attrs = entity_query(params, terms)
    with request.app.state.db.read() as session:
        documents, total = service.query_entities(
            session,
            tenant.commune_id,
            query,
            limit=limit,
            offset=offset,
            count=params.get("count") == "true",
        )
    headers = _page_links(request, offset, limit, len(documents), total)
    if total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    render = _renderer(params, terms, form, sys_attrs, attrs)
    if media_type == GEO_JSON:
        body = _feature_collection(documents, render, params, terms)
        return json_response(request, body, context, headers=headers, media_type=GEO_JSON)
    return json_response(request, [render(doc) for doc in documents], context, headers=headers)


def entity_query(params: Any, terms: TermMap) -> tuple[service.EntityQuery, frozenset | None]:
    selection = parse_type_selection(params["type"], terms) if params.get("type") else None
    ids = tuple(split_list(params.get("id")))
    attrs = frozenset(terms.expand(a) for a in split_list(params.get("attrs"))) or None
    if not (
        params.get("scopeQ")
        or selection
        or ids
        or params.get("idPattern")
        or attrs
        or params.get("q")
        or params.get("georel")
        or params.get("local") == "true"
    ):
        raise BadRequestData("give at least one of type, id, idPattern, attrs, q, scopeQ or georel")
    predicates = []
    bound = None
    if selection is not None and selection.predicate is not None:
        predicates.append(lambda doc: selection.matches(doc["type"]))
    if params.get("q"):
        try:
            bound = bind(parse_q(params["q"]), terms.expand)
        except QuerySyntaxError as error:
            raise BadRequestData(f"invalid q: {error}") from error
        predicates.append(lambda doc: matches(bound, doc))
    if attrs is not None:
        predicates.append(lambda doc: any(iri in doc for iri in attrs))
    if params.get("scopeQ"):
        try:
            scopes = parse_scope_q(params["scopeQ"])
        except QuerySyntaxError as error:
            raise BadRequestData(f"invalid scopeQ: {error}") from error
        predicates.append(lambda doc: scope_matches(scopes, doc.get("scope")))
    try:
        geo = parse_geoquery(
            params.get("georel"),
            params.get("geometry"),
            params.get("coordinates"),
            params.get("geoproperty"),
        )
    except GeoQuerySyntaxError as error:
        raise BadRequestData(f"invalid geo-query: {error}") from error
    query = service.EntityQuery(
        types=selection.any_of if selection else (),
        ids=ids,
        id_pattern=params.get("idPattern"),
        geo=geo,
        geo_attribute=terms.expand(geo.geoproperty) if geo else None,
        matches=(lambda doc: all(p(doc) for p in predicates)) if predicates else None,
        q=bound,
    )
    return query, attrs


def _renderer(params: Any, terms: TermMap, form: str, sys_attrs: bool, attrs: Any):
    lang = params.get("lang")
    picked = frozenset(terms.expand(a) for a in split_list(params.get("pick"))) or None
    omitted = frozenset(terms.expand(a) for a in split_list(params.get("omit")))
    wanted = attrs if attrs is not None else picked

    def render(document: dict[str, Any]) -> dict[str, Any]:
        shown = {k: v for k, v in document.items() if k not in omitted}
        return render_entity(shown, terms, form=form, sys_attrs=sys_attrs, attrs=wanted, lang=lang)

    return render


def _feature_collection(documents: list, render: Any, params: Any, terms: TermMap) -> dict:
    geometry_iri = terms.expand(params.get("geometryProperty") or "location")
    features = []
    for document in documents:
        instances = document.get(geometry_iri) or [{}]
        properties = render(document)
        features.append(
            {
                "id": document["id"],
                "type": "Feature",
                "geometry": instances[0].get("value"),
                "properties": {k: v for k, v in properties.items() if k != "id"},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def _page_links(
    request: Request, offset: int, limit: int, returned: int, total: int | None
) -> dict[str, str]:
    links = []
    base = dict(request.query_params)
    if offset > 0:
        previous = {**base, "offset": str(max(offset - limit, 0)), "limit": str(limit)}
        links.append(f'<{request.url.path}?{urlencode(previous)}>; rel="prev"')
    has_more = returned == limit if total is None else offset + returned < total
    if has_more and returned:
        following = {**base, "offset": str(offset + limit), "limit": str(limit)}
        links.append(f'<{request.url.path}?{urlencode(following)}>; rel="next"')
    return {"Link": ", ".join(links)} if links else {}


@router.get("/entities/{entity_id:path}")
async def retrieve_entity(request: Request, tenant: Reader, entity_id: str) -> Response:
    params = request.query_params
    terms, context = await arequest_terms(request)
    media_type = _accepted(request)
    form, sys_attrs = parse_options(params)
    attrs = frozenset(terms.expand(a) for a in split_list(params.get("attrs"))) or None
    with request.app.state.db.read() as session:
        document = service.get_entity(session, tenant.commune_id, entity_id)
    render = _renderer(params, terms, form, sys_attrs, attrs)
    if media_type == GEO_JSON:
        collection = _feature_collection([document], render, params, terms)
        return json_response(request, collection["features"][0], context, media_type=GEO_JSON)
    return json_response(request, render(document), context)


@router.delete("/entities/{entity_id:path}/attrs/{attr_id}", status_code=204)
async def delete_attribute(
    request: Request, tenant: Writer, entity_id: str, attr_id: str
) -> Response:
    terms, _context = await arequest_terms(request)
    params = request.query_params
    await request.app.state.db.awrite(
        service.delete_attribute,
        tenant.commune_id,
        entity_id,
        terms.expand(attr_id),
        dataset_id=params.get("datasetId"),
        delete_all=params.get("deleteAll") == "true",
    )
    return Response(status_code=204)


@router.patch("/entities/{entity_id:path}/attrs/{attr_id}", status_code=204)
async def update_attribute(
    request: Request, tenant: Writer, entity_id: str, attr_id: str
) -> Response:
    payload, terms, _context = await read_body(request)
    if not isinstance(payload, dict):
        raise BadRequestData("the body must be one attribute fragment")
    fragment = parse_attribute(
        attr_id, {k: v for k, v in payload.items() if k != "@context"}, terms
    )[0]
    await request.app.state.db.awrite(
        service.update_attribute, tenant.commune_id, entity_id, terms.expand(attr_id), fragment
    )
    return Response(status_code=204)


@router.post("/entities/{entity_id:path}/attrs", status_code=204)
async def append_attributes(request: Request, tenant: Writer, entity_id: str) -> Response:
    payload, terms, context = await read_body(request)
    attributes, entity_type = _attributes_body(payload, terms)
    options = split_list(request.query_params.get("options"))
    result = await request.app.state.db.awrite(
        service.append_attributes,
        tenant.commune_id,
        entity_id,
        attributes,
        no_overwrite="noOverwrite" in options,
        entity_type=entity_type,
    )
    return _update_result(request, result, terms, context)


@router.patch("/entities/{entity_id:path}/attrs", status_code=204)
async def update_attributes(request: Request, tenant: Writer, entity_id: str) -> Response:
    payload, terms, context = await read_body(request)
    attributes, _entity_type = _attributes_body(payload, terms)
    result = await request.app.state.db.awrite(
        service.update_attributes, tenant.commune_id, entity_id, attributes
    )
    return _update_result(request, result, terms, context)


def _attributes_body(payload: Any, terms: TermMap) -> tuple[dict[str, Any], list[str] | None]:
    if not isinstance(payload, dict):
        raise BadRequestData("the body must be an object of attributes")
    entity_type = None
    if "type" in payload:
        entity_type = parse_types(payload["type"], terms)
    attributes = parse_attributes(payload, terms, allow_null=False)
    if not attributes:
        raise BadRequestData("no attribute given")
    return attributes, entity_type


def _update_result(
    request: Request, result: service.UpdateResult, terms: TermMap, context: Any
) -> Response:
    if not result.not_updated:
        return Response(status_code=204)
    body = {
        "updated": [terms.compact(iri) for iri in result.updated],
        "notUpdated": [
            {"attributeName": terms.compact(iri), "reason": reason}
            for iri, reason in result.not_updated
        ],
    }
    return Response(orjson.dumps(body), 207, media_type="application/json")


@router.put("/entities/{entity_id:path}", status_code=204)
async def replace_entity(request: Request, tenant: Writer, entity_id: str) -> Response:
    payload, terms, _context = await read_body(request)
    if not isinstance(payload, dict):
        raise BadRequestData("the body must be an entity")
    entity = parse_entity({**payload, "id": entity_id}, terms, require_type=False)
    if payload.get("id", entity_id) != entity_id:
        raise BadRequestData("the id of the body differs from the id in the URL")
    await request.app.state.db.awrite(service.replace_entity, tenant.commune_id, entity)
    return Response(status_code=204)


@router.patch("/entities/{entity_id:path}", status_code=204)
async def merge_entity(request: Request, tenant: Writer, entity_id: str) -> Response:
    payload, terms, _context = await read_body(request)
    if not isinstance(payload, dict):
        raise BadRequestData("the body must be an entity fragment")
    if payload.get("id", entity_id) != entity_id:
        raise BadRequestData("the id of the body differs from the id in the URL")
    entity: dict[str, Any] = {"id": entity_id}
    if "type" in payload:
        entity["type"] = parse_types(payload["type"], terms)
    entity.update(parse_attributes(payload, terms, allow_null=True))
    await request.app.state.db.awrite(service.merge_entity, tenant.commune_id, entity)
    return Response(status_code=204)


@router.delete("/entities/{entity_id:path}", status_code=204)
async def delete_entity(request: Request, tenant: Writer, entity_id: str) -> Response:
    await request.app.state.db.awrite(service.delete_entity, tenant.commune_id, entity_id)
    return Response(status_code=204)


# ---------------------------------------------------------------- batch operations

MAX_BATCH = 10_000


async def _batch_body(request: Request) -> tuple[list[Any], TermMap]:
    payload, terms, _context = await read_body(request)
    if not isinstance(payload, list):
        raise BadRequestData("a batch operation takes a JSON array")
    if len(payload) > MAX_BATCH:
        raise BadRequestData(f"a batch holds at most {MAX_BATCH} items")
    return payload, terms


def _parse_batch(
    payload: list[Any], terms: TermMap, *, require_type: bool
) -> tuple[list[dict[str, Any]], list[tuple[str, NgsiError]]]:
    parsed, errors = [], []
    for item in payload:
        try:
            parsed.append(parse_entity(item, terms, require_type=require_type))
        except NgsiError as error:
            entity_id = item.get("id") if isinstance(item, dict) else None
            errors.append((str(entity_id), error))
    return parsed, errors


def _batch_response(
    result: service.BatchResult, early: list[tuple[str, NgsiError]], *, created_status: bool
) -> Response:
    errors = [*early, *result.errors]
    if errors:
        body = {
            "success": result.success,
            "errors": [
                {"entityId": entity_id, "error": _problem(error)} for entity_id, error in errors
            ],
        }
        return Response(orjson.dumps(body), 207, media_type="application/json")
    if created_status and result.created:
        return Response(orjson.dumps(result.created), 201, media_type="application/json")
    return Response(status_code=204)


def _problem(error: Exception) -> dict[str, Any]:
    if isinstance(error, NgsiError):
        return error.problem()
    return BadRequestData(str(error)).problem()


@router.post("/entityOperations/create")
async def batch_create(request: Request, tenant: Writer) -> Response:
    payload, terms = await _batch_body(request)
    entities, errors = _parse_batch(payload, terms, require_type=True)
    result = await request.app.state.db.awrite(service.create_entities, tenant.commune_id, entities)
    service.STATISTICS.grew(request.app.state.db, len(result.created))
    return _batch_response(result, errors, created_status=True)


@router.post("/entityOperations/upsert")
async def batch_upsert(request: Request, tenant: Writer) -> Response:
    payload, terms = await _batch_body(request)
    options = split_list(request.query_params.get("options")) or ["replace"]
    if not set(options) <= {"replace", "update"} or len(options) > 1:
        raise BadRequestData("options must be replace or update")
    entities, errors = _parse_batch(payload, terms, require_type=True)
    result = await request.app.state.db.awrite(
        service.upsert_entities, tenant.commune_id, entities, replace=options == ["replace"]
    )
    service.STATISTICS.grew(request.app.state.db, len(result.created))
    return _batch_response(result, errors, created_status=True)


@router.post("/entityOperations/update")
async def batch_update(request: Request, tenant: Writer) -> Response:
    payload, terms = await _batch_body(request)
    options = split_list(request.query_params.get("options"))
    entities, errors = _parse_batch(payload, terms, require_type=False)
    result = await request.app.state.db.awrite(
        service.update_entities,
        tenant.commune_id,
        entities,
        no_overwrite="noOverwrite" in options,
    )
    return _batch_response(result, errors, created_status=False)


@router.post("/entityOperations/delete")
async def batch_delete(request: Request, tenant: Writer) -> Response:
    payload, _terms = await _batch_body(request)
    if not all(isinstance(item, str) for item in payload):
        raise BadRequestData("a batch delete takes an array of entity ids")
    result = await request.app.state.db.awrite(
        service.delete_entities, tenant.commune_id, list(payload)
    )
    return _batch_response(result, [], created_status=False)


@router.post("/entityOperations/query")
async def batch_query(request: Request, tenant: Reader) -> Response:
    """Query with the parameters in a Query body (for long queries)."""
    payload, terms, context = await read_body(request)
    if not isinstance(payload, dict) or payload.get("type") != "Query":
        raise BadRequestData('the body must be a Query object ({"type": "Query", …})')
    params = _query_params_from_body(payload, request.query_params)
    return await _run_query(request, tenant, params, terms, context)


def _query_params_from_body(payload: dict[str, Any], query_params: Any) -> dict[str, str]:
    params = {
        k: v
        for k, v in query_params.items()
        if k in {"limit", "offset", "count", "options", "format", "lang"}
    }
    selectors = payload.get("entities") or []
    if not isinstance(selectors, list) or not all(isinstance(s, dict) for s in selectors):
        raise BadRequestData("entities must be an array of EntitySelector objects")
    types = [s["type"] for s in selectors if isinstance(s.get("type"), str)]
    ids = [s["id"] for s in selectors if isinstance(s.get("id"), str)]
    patterns = [s["idPattern"] for s in selectors if isinstance(s.get("idPattern"), str)]
    if types:
        params["type"] = "|".join(f"({t})" if any(c in t for c in ",;|") else t for t in types)
    if ids:
        params["id"] = ",".join(ids)
    if patterns:
        params["idPattern"] = "|".join(f"(?:{p})" for p in patterns)
    if payload.get("attrs"):
        params["attrs"] = ",".join(payload["attrs"])
    for key in ("q", "lang", "scopeQ"):
        if isinstance(payload.get(key), str):
            params[key] = payload[key]
    geo = payload.get("geoQ")
    if isinstance(geo, dict):
        params.update(
            {
                k: v if isinstance(v, str) else orjson.dumps(v).decode()
                for k, v in geo.items()
                if k in {"georel", "geometry", "coordinates", "geoproperty"}
            }
        )
    return params


# ---------------------------------------------------------------- discovery


@router.get("/types")
def list_types(request: Request, tenant: Reader) -> Response:
    terms, context = request_terms(request)
    with request.app.state.db.read() as session:
        counts = service.type_counts(session, tenant.commune_id)
        details = (
            service.attribute_details(session, tenant.commune_id)
            if request.query_params.get("details") == "true"
            else None
        )
    if details is None:
        names = sorted(terms.compact(iri) for iri in counts)
        body: Any = {
            "id": _list_id("EntityTypeList", names),
            "type": "EntityTypeList",
            "typeList": names,
        }
    else:
        body = [
            {
                "id": iri,
                "type": "EntityType",
                "typeName": terms.compact(iri),
                "attributeNames": sorted(
                    terms.compact(a) for a, info in details.items() if iri in info.type_names
                ),
            }
            for iri in sorted(counts)
        ]
    return json_response(request, body, context)


@router.get("/types/{type_name:path}")
def type_info(request: Request, tenant: Reader, type_name: str) -> Response:
    terms, context = request_terms(request)
    iri = terms.expand(type_name)
    with request.app.state.db.read() as session:
        count = service.type_counts(session, tenant.commune_id).get(iri)
        details = service.attribute_details(session, tenant.commune_id, iri) if count else {}
    if not count:
        raise ResourceNotFound(f"no entity of type {type_name}")
    body = {
        "id": iri,
        "type": "EntityTypeInfo",
        "typeName": terms.compact(iri),
        "entityCount": count,
        "attributeDetails": [
            {
                "id": attr,
                "type": "Attribute",
                "attributeName": terms.compact(attr),
                "attributeTypes": sorted(info.attribute_types),
            }
            for attr, info in sorted(details.items())
        ],
    }
    return json_response(request, body, context)


@router.get("/attributes")
def list_attributes(request: Request, tenant: Reader) -> Response:
    terms, context = request_terms(request)
    with request.app.state.db.read() as session:
        details = service.attribute_details(session, tenant.commune_id)
    if request.query_params.get("details") == "true":
        body: Any = [_attribute_body(iri, info, terms) for iri, info in sorted(details.items())]
    else:
        names = sorted(terms.compact(iri) for iri in details)
        body = {
            "id": _list_id("AttributeList", names),
            "type": "AttributeList",
            "attributeList": names,
        }
    return json_response(request, body, context)


@router.get("/attributes/{attribute_name:path}")
def attribute_info(request: Request, tenant: Reader, attribute_name: str) -> Response:
    terms, context = request_terms(request)
    iri = terms.expand(attribute_name)
    with request.app.state.db.read() as session:
        info = service.attribute_details(session, tenant.commune_id).get(iri)
    if info is None:
        raise ResourceNotFound(f"no entity has the attribute {attribute_name}")
    return json_response(request, _attribute_body(iri, info, terms), context)


def _attribute_body(iri: str, info: service.AttributeInfo, terms: TermMap) -> dict[str, Any]:
    return {
        "id": iri,
        "type": "Attribute",
        "attributeName": terms.compact(iri),
        "attributeCount": info.count,
        "attributeTypes": sorted(info.attribute_types),
        "typeNames": sorted(terms.compact(t) for t in info.type_names),
    }


def _list_id(kind: str, names: list[str]) -> str:
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
    return f"urn:ngsi-ld:{kind}:{digest}"


async def on_ngsi_error(_request: Request, error: NgsiError) -> Response:
    return problem_response(error)


async def on_routing_error(_request: Request, error: StarletteHTTPException) -> Response:
    """A path or method the API does not have, as NGSI-LD ProblemDetails."""
    if error.status_code == 405:
        return problem_response(MethodNotAllowed(f"{error.detail}"))
    if error.status_code == 404:
        return problem_response(ResourceNotFound("no such resource in the NGSI-LD API"))
    return problem_response(BadRequestData(str(error.detail)))


EXCEPTION_HANDLERS = {NgsiError: on_ngsi_error}
HTTP_ERROR_HANDLERS = {PREFIX + "/": on_routing_error}


# The @context store (clause 5.13), subscriptions and the temporal API add their
# routes to ``router`` when imported (they import tenant_reader/tenant_writer from here).
from communs.hub import contexts, subscriptions_api, temporal_api  # noqa: E402, F401
