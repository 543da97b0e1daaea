"""The JSON-LD @context store of the hub (NGSI-LD clause 5.13, "@context management").

Contexts are instance-wide, one row of ``hub_contexts`` per URL:

* ``hosted``: pushed by a client (``POST /jsonldContexts``) and served by us at
  ``<base URL>/ngsi-ld/v1/jsonldContexts/<local id>``;
* ``cached``: an operator-provided copy of a remote context (``communs hub context add``),
  so that an air-gapped site resolves it without network;
* ``fetched``: a remote context fetched on first use and kept.

``ContextLoader`` is what ``communs.hub.context.term_map`` calls for a context URL: memory,
then the table, then (when ``COMMUNS_HUB_FETCH_CONTEXTS`` allows) the network, with a hard
deadline and a short memory of failures so that a dead URL does not slow every request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson
from fastapi import APIRouter, Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from communs.core.db import Database, utcnow
from communs.core.settings import Settings
from communs.hub import api as hub_api
from communs.hub import context as jsonld_context
from communs.hub.api import tenant_reader, tenant_writer
from communs.hub.context import ContextNotAvailable, InvalidContext
from communs.hub.errors import (
    BadRequestData,
    InvalidRequest,
    LdContextNotAvailable,
    ResourceNotFound,
    UnsupportedMediaType,
)
from communs.hub.models import HubContext

log = logging.getLogger(__name__)

PREFIX = "/ngsi-ld/v1"
CONTEXTS_PATH = f"{PREFIX}/jsonldContexts"
JSON_LD = "application/ld+json"
HOSTED, CACHED, FETCHED = "hosted", "cached", "fetched"
KINDS = (HOSTED, CACHED, FETCHED)
# The kinds of the specification ("@context information", clause 5.2.40).
SPEC_KINDS = {HOSTED: "Hosted", CACHED: "Cached", FETCHED: "Cached"}
MAX_URL_LENGTH = 512
MAX_CONTEXT_BYTES = 1024 * 1024
FETCH_TIMEOUT = 3.0
FETCH_MAX_REDIRECTS = 3
NEGATIVE_TTL = 60.0
MEMORY_SIZE = 256


# ---------------------------------------------------------------- validation


def check_url(url: Any) -> str:
    """An absolute http(s) URL that fits the table, or BadRequestData."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise BadRequestData(
            f"a context URL is an absolute http(s) URL of at most {MAX_URL_LENGTH} characters"
        )
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise BadRequestData(f"invalid context URL {url!r}: {error}") from error
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise BadRequestData(f"a context URL must be an absolute http(s) URL, not {url!r}")
    return url


def check_document(document: Any) -> dict[str, Any]:
    """A JSON-LD document whose @context is an object, a URL or a list, and processable."""
    if not isinstance(document, dict) or "@context" not in document:
        raise BadRequestData("a JSON-LD context document is a JSON object with an @context member")
    context = document["@context"]
    if not isinstance(context, dict | str | list):
        raise BadRequestData("@context must be an object, a URL or a list of them")
    # Check the term definitions without fetching the contexts it references (and without
    # term_map, whose cache must not keep a term map built from such placeholders).
    builder = jsonld_context._ContextBuilder(lambda _url: {"@context": {}})
    try:
        builder.add(context)
    except InvalidContext as error:
        raise BadRequestData(f"invalid @context: {error}") from error
    return document


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise BadRequestData(f"kind must be one of {', '.join(KINDS)}")


# ---------------------------------------------------------------- units of work


def add_context(session: Session, url: str, document: Any, kind: str) -> HubContext:
    """Store ``document`` as the context of ``url``.

    A hosted context is new by construction (its URL carries a fresh UUID). A cached copy
    replaces whatever the URL had (the operator decides). A fetched copy never replaces a
    hosted or cached one (an operator may have added it while the fetch was under way).
    """
    check_url(url)
    check_document(document)
    _check_kind(kind)
    row = session.get(HubContext, url)
    if row is None:
        row = HubContext(url=url, kind=kind, document=document, created_at=utcnow(), hits=0)
        session.add(row)
    elif kind == HOSTED and row.kind != HOSTED:
        raise BadRequestData(f"{url} is already known as a {row.kind} context")
    elif kind != FETCHED or row.kind == FETCHED:
        row.kind, row.document, row.created_at = kind, document, utcnow()
    session.flush()
    return row


def get_context(session: Session, url: str) -> HubContext | None:
    return session.get(HubContext, url)


def list_contexts(session: Session, kind: str | None = None) -> list[HubContext]:
    _check_kind(kind)
    query = select(HubContext).order_by(HubContext.created_at, HubContext.url)
    if kind is not None:
        query = query.where(HubContext.kind == kind)
    return list(session.scalars(query))


def delete_context(session: Session, url: str) -> HubContext:
    """Forget the context of ``url`` (ResourceNotFound if there is none); returns it."""
    row = session.get(HubContext, url)
    if row is None:
        raise ResourceNotFound(f"no @context {url}")
    session.delete(row)
    session.flush()
    return row


def count_hit(session: Session, url: str) -> None:
    row = session.get(HubContext, url)
    if row is not None:
        row.hits = (row.hits or 0) + 1


# ---------------------------------------------------------------- the loader


def _refuse_private_address(request: httpx.Request) -> None:
    """Fetches (redirects included) go to public addresses only: a client must not make
    the server reach its own network (COMMUNS_HUB_FETCH_PRIVATE_CONTEXTS allows it)."""
    host = request.url.host
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError as error:
        raise ValueError(f"cannot resolve {host}") from error
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            raise ValueError(f"{host} resolves to a non-public address ({ip})")


class ContextLoader:
    """``loader(url) -> document`` for ``term_map``: memory, table, then the network.

    Every failure is ``ContextNotAvailable``, within ``timeout`` seconds in total whatever
    the remote server does; failures of a fetch are remembered ``negative_ttl`` seconds.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings | None = None,
        *,
        fetch: bool | None = None,
        timeout: float = FETCH_TIMEOUT,
        max_bytes: int = MAX_CONTEXT_BYTES,
        negative_ttl: float = NEGATIVE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.fetch_enabled = (
            fetch
            if fetch is not None
            else (settings.hub_fetch_contexts if settings is not None else True)
        )
        self.allow_private = settings is not None and settings.hub_fetch_private_contexts
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.negative_ttl = negative_ttl
        self.clock = clock
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._failures: dict[str, tuple[float, str]] = {}
        self._pending: dict[str, concurrent.futures.Future[dict[str, Any]]] = {}
        self._lock = threading.RLock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __call__(self, url: str) -> dict[str, Any]:
        with self._lock:
            document = self._memory.get(url)
            if document is not None:
                self._memory.move_to_end(url)
                return document
        with self.db.read() as session:
            row = get_context(session, url)
            document = row.document if row is not None else None
        if document is not None:
            self._remember(url, document)
            return document
        if not self.fetch_enabled:
            raise ContextNotAvailable(url)
        with self._lock:
            failure = self._failures.get(url)
            if failure is not None:
                if failure[0] > self.clock():
                    raise ContextNotAvailable(url)
                del self._failures[url]
        document = self.fetch(url)
        self.store(url, document)
        return document

    def fetch(self, url: str) -> dict[str, Any]:
        """The context document at ``url`` from the network, or ContextNotAvailable.

        The request runs in a worker thread so that the deadline holds even against a
        server that sends one byte at a time; concurrent calls for one URL share it.
        """
        if not self.fetch_enabled or urlsplit(url).scheme not in ("http", "https"):
            raise ContextNotAvailable(url)
        with self._lock:
            future = self._pending.get(url)
            if future is None:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        max_workers=4, thread_name_prefix="communs-context-fetch"
                    )
                future = self._executor.submit(self._download, url, self.clock() + self.timeout)
                self._pending[url] = future
                future.add_done_callback(lambda _f: self._forget_pending(url, future))
        try:
            return future.result(timeout=self.timeout)
        except Exception as error:  # noqa: BLE001 - every failure is "not available"
            reason = "timed out" if isinstance(error, TimeoutError) else str(error) or repr(error)
            log.warning("JSON-LD @context %s not available: %s", url, reason)
            with self._lock:
                self._failures[url] = (self.clock() + self.negative_ttl, reason)
            raise ContextNotAvailable(url) from error

    def _forget_pending(self, url: str, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            if self._pending.get(url) is future:
                del self._pending[url]

    def _download(self, url: str, deadline: float) -> dict[str, Any]:
        headers = {
            "Accept": f"{JSON_LD}, application/json;q=0.9, */*;q=0.1",
            "Accept-Encoding": "gzip, identity",
        }
        timeout = httpx.Timeout(self.timeout)
        hooks = {} if self.allow_private else {"request": [_refuse_private_address]}
        with (
            httpx.Client(
                follow_redirects=True,
                max_redirects=FETCH_MAX_REDIRECTS,
                timeout=timeout,
                event_hooks=hooks,
            ) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            response.raise_for_status()
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise ValueError(f"larger than {self.max_bytes} bytes")
            body = bytearray()
            for chunk in response.iter_bytes():  # decoded: the limit is on the document
                body += chunk
                if len(body) > self.max_bytes:
                    raise ValueError(f"larger than {self.max_bytes} bytes")
                if self.clock() > deadline:
                    raise TimeoutError("timed out")
        document = orjson.loads(bytes(body))
        if not isinstance(document, dict) or not isinstance(
            document.get("@context"), dict | str | list
        ):
            raise ValueError("not a JSON-LD context document")
        return document

    def store(self, url: str, document: dict[str, Any]) -> None:
        """Keep a fetched document (in the table when the URL fits it) and in memory."""
        self._remember(url, document)
        try:
            self.db.write(add_context, url, document, FETCHED)
        except Exception:  # noqa: BLE001 - the request can go on with the copy in memory
            log.warning("could not store the fetched @context %s", url, exc_info=True)

    def _remember(self, url: str, document: dict[str, Any]) -> None:
        with self._lock:
            self._memory[url] = document
            self._memory.move_to_end(url)
            while len(self._memory) > MEMORY_SIZE:
                self._memory.popitem(last=False)
            self._failures.pop(url, None)

    def forget(self, url: str | None = None) -> None:
        """Drop what is known of ``url`` (of every URL when None), and the term maps."""
        with self._lock:
            if url is None:
                self._memory.clear()
                self._failures.clear()
            else:
                self._memory.pop(url, None)
                self._failures.pop(url, None)
        jsonld_context.clear_cache()

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def loader_for(app: Any) -> Callable[[str], Any]:
    """The context loader of ``app`` (``app.state.hub_context_loader``), made on first use."""
    loader = getattr(app.state, "hub_context_loader", None)
    if loader is None:
        loader = ContextLoader(app.state.db, app.state.settings)
        app.state.hub_context_loader = loader
    return loader


def _forget(request: Request, url: str) -> None:
    loader = getattr(request.app.state, "hub_context_loader", None)
    if isinstance(loader, ContextLoader):
        loader.forget(url)
    else:
        jsonld_context.clear_cache()


# ---------------------------------------------------------------- routes

router = APIRouter(prefix=PREFIX, tags=["ngsi-ld"])


def hosted_url(settings: Settings, local_id: str) -> str:
    return f"{settings.base_url}{CONTEXTS_PATH}/{local_id}"


def local_id(row: HubContext) -> str:
    """Hosted contexts: the UUID ending their URL; others: their URL, percent-encoded."""
    if row.kind == HOSTED and f"{CONTEXTS_PATH}/" in row.url:
        return row.url.rsplit("/", 1)[-1]
    return quote(row.url, safe="")


def context_info(row: HubContext) -> dict[str, Any]:
    created = row.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "URL": row.url,
        "localId": local_id(row),
        "kind": SPEC_KINDS[row.kind],
        "createdAt": created,
        "numberOfHits": row.hits or 0,
        "extraInfo": {"origin": row.kind},
    }


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return False
    if value not in ("true", "false"):
        raise BadRequestData(f"{name} must be true or false")
    return value == "true"


def _kind_filter(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value in KINDS:
        return (value,)
    if value == "Hosted":
        return (HOSTED,)
    if value == "Cached":
        return (CACHED, FETCHED)
    if value == "ImplicitlyCreated":
        return ()
    raise BadRequestData("kind must be Hosted, Cached or ImplicitlyCreated")


def _find(session: Session, settings: Settings, context_id: str) -> HubContext:
    """The context named by a local id (hosted) or by its URL (any kind)."""
    row = None
    if context_id.startswith(("http://", "https://")):
        row = get_context(session, context_id)
    else:
        try:
            uuid.UUID(context_id)
        except ValueError:
            pass
        else:
            row = get_context(session, hosted_url(settings, context_id))
            if row is None:  # hosted under an earlier base URL
                suffix = f"{CONTEXTS_PATH}/{context_id}"
                row = session.scalars(
                    select(HubContext).where(
                        HubContext.kind == HOSTED, HubContext.url.endswith(suffix)
                    )
                ).first()
    if row is None:
        raise ResourceNotFound(f"no @context {context_id}")
    return row


def _json(body: Any, status: int = 200, media_type: str = "application/json") -> Response:
    return Response(orjson.dumps(body), status, media_type=media_type)


@router.post("/jsonldContexts", status_code=201)
async def add_hosted_context(request: Request, _tenant: Any = Depends(tenant_writer)) -> Response:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in ("application/json", JSON_LD):
        raise UnsupportedMediaType(f"Content-Type must be application/json or {JSON_LD}")
    raw = await request.body()
    if len(raw) > MAX_CONTEXT_BYTES:
        raise BadRequestData(f"a @context is at most {MAX_CONTEXT_BYTES} bytes")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}") from error
    url = hosted_url(request.app.state.settings, str(uuid.uuid4()))
    await request.app.state.db.awrite(add_context, url, check_document(document), HOSTED)
    _forget(request, url)
    return Response(status_code=201, headers={"Location": url})


@router.get("/jsonldContexts")
async def list_hosted_contexts(request: Request, _tenant: Any = Depends(tenant_reader)) -> Response:
    details = _flag(request, "details")
    kinds = _kind_filter(request.query_params.get("kind"))
    with request.app.state.db.read() as session:
        rows = [row for row in list_contexts(session) if kinds is None or row.kind in kinds]
    return _json([context_info(row) if details else row.url for row in rows])


@router.get("/jsonldContexts/{context_id:path}")
async def serve_context(
    request: Request, context_id: str, _tenant: Any = Depends(tenant_reader)
) -> Response:
    details = _flag(request, "details")
    with request.app.state.db.read() as session:
        row = _find(session, request.app.state.settings, context_id)
    if details:
        return _json(context_info(row))
    await request.app.state.db.awrite(count_hit, row.url)
    accept = request.headers.get("accept", "").lower()
    plain = "application/json" in accept and JSON_LD not in accept
    return _json(row.document, media_type="application/json" if plain else JSON_LD)


@router.delete("/jsonldContexts/{context_id:path}", status_code=204)
async def delete_or_reload_context(
    request: Request, context_id: str, _tenant: Any = Depends(tenant_writer)
) -> Response:
    reload = _flag(request, "reload")
    with request.app.state.db.read() as session:
        row = _find(session, request.app.state.settings, context_id)
    url, kind = row.url, row.kind
    if not reload:
        await request.app.state.db.awrite(delete_context, url)
        _forget(request, url)
        return Response(status_code=204)
    if kind != FETCHED:
        raise BadRequestData(f"only fetched contexts can be reloaded; {url} is {kind}")
    loader = loader_for(request.app)
    if not isinstance(loader, ContextLoader):
        raise LdContextNotAvailable(f"@context {url} cannot be reloaded here")
    try:
        document = await asyncio.to_thread(loader.fetch, url)
    except ContextNotAvailable as error:
        raise LdContextNotAvailable(f"@context {url} could not be retrieved") from error
    await request.app.state.db.awrite(add_context, url, document, FETCHED)
    loader.forget(url)
    return Response(status_code=204)


def _attach(parent: APIRouter) -> None:
    """Serve these routes with the rest of the NGSI-LD API (``communs.hub.api.router``).

    Done from here rather than by ``include_router`` in api.py: this module imports the
    tenant dependencies of api.py, so whichever of the two is imported first, the routes
    end up on that router exactly once.
    """
    for route in router.routes:
        if route not in parent.routes:
            parent.routes.append(route)


_attach(hub_api.router)
