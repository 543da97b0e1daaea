"""The web application: app factory, page rendering, language, CSRF, errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from itsdangerous import BadSignature, URLSafeSerializer
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import communs
from communs.core import i18n
from communs.core.auth import (
    AccessDenied,
    CommuneNotFound,
    LoginRequired,
    Principal,
    load_principal,
)
from communs.core.db import Database
from communs.core.events import InProcessBus
from communs.core.i18n import gettext as _
from communs.core.jobs import JobRunner
from communs.core.models import Role
from communs.core.plugins import background_services, capability_modules, load_job_handlers
from communs.core.security import csrf_token, csrf_valid
from communs.core.service import list_communes
from communs.core.settings import Settings

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(communs.__file__).parent
STATIC_DIR = PACKAGE_DIR / "static"
LANGUAGE_COOKIE = "communs_lang"
CSRF_COOKIE = "communs_csrf"
FLASH_COOKIE = "communs_flash"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SITE_NAME = "Communs"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        b"script-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'self'",
    ),
]


class CsrfFailed(Exception):
    pass


# ---------------------------------------------------------------- templates


def template_dirs() -> list[Path]:
    return [path for path in PACKAGE_DIR.glob("*/templates") if path.is_dir()]


def make_environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader([str(path) for path in template_dirs()]),
        autoescape=select_autoescape(["html", "xml"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)
    environment.globals.update(
        static=lambda path: f"/static/{path}?v={communs.__version__}",
        site_name=SITE_NAME,
        version=communs.__version__,
    )
    return environment


@dataclass(frozen=True)
class NavItem:
    url: str
    label: str
    current: bool = False


def navigation(request: Request, principal: Principal) -> list[NavItem]:
    commune = getattr(request.state, "commune", None)
    items: list[tuple[str, str]] = [("/", _("Accueil"))]
    if commune is not None:
        items.append((f"/{commune.slug}/", commune.name))
        for module in capability_modules("views"):
            items.extend(getattr(module, "navigation_items", lambda _c, _p: [])(commune, principal))
        if principal.has_role(commune.id, [Role.COMMUNE_ADMIN]):
            items.append((f"/{commune.slug}/admin/", _("Administration de la commune")))
    if principal.user is not None and not principal.is_instance_admin:
        with request.app.state.db.read() as session:
            mine = list_communes(session, principal.roles.keys())
        items.extend(
            (f"/{own.slug}/", own.name) for own in mine if commune is None or own.id != commune.id
        )
    if principal.is_instance_admin:
        items.append(("/admin/", _("Administration de l'instance")))
    path = request.url.path
    return [NavItem(url, label, current=url == path) for url, label in items]


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
) -> HTMLResponse:
    try:
        principal = load_principal(request)
    except LoginRequired:
        principal = Principal()
    settings: Settings = request.app.state.settings
    flashes = read_flashes(request)
    values = {
        "request": request,
        "user": principal.user,
        "principal": principal,
        "commune": getattr(request.state, "commune", None),
        "language": i18n.current_language(),
        "languages": [(code, i18n.LANGUAGE_NAMES.get(code, code)) for code in settings.languages],
        "navigation": navigation(request, principal),
        "csrf_token": lambda: csrf_token(settings.secret_key, request.state.csrf_seed),
        "home_url": "/",
        "flashes": flashes,
        "page_title": "",
    }
    values.update(context or {})
    body = request.app.state.templates.get_template(template).render(values)
    response = HTMLResponse(body, status_code=status_code)
    if flashes:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


# ---------------------------------------------------------------- flash messages


def _flash_serializer(request: Request) -> URLSafeSerializer:
    return URLSafeSerializer(request.app.state.settings.secret_key, salt="flash")


def redirect(request: Request, url: str, message: str | None = None, kind: str = "success"):
    """303 to ``url``, carrying a one-time message shown on the next page."""
    response = RedirectResponse(url, status_code=303)
    if message:
        response.set_cookie(
            FLASH_COOKIE,
            _flash_serializer(request).dumps([{"kind": kind, "text": str(message)}]),
            httponly=True,
            samesite="lax",
            path="/",
        )
    return response


def read_flashes(request: Request) -> list[dict[str, str]]:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return []
    try:
        return list(_flash_serializer(request).loads(raw))
    except BadSignature:
        return []


# ---------------------------------------------------------------- middleware


class ShellMiddleware:
    """Per request: the language, the CSRF seed cookie, and security headers."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cookies = _cookies(scope)
        headers = dict(scope.get("headers") or [])
        language = cookies.get(LANGUAGE_COOKIE)
        if language not in self.settings.languages:
            accept = headers.get(b"accept-language", b"").decode("latin-1")
            language = (
                i18n.negotiate(accept, self.settings.languages) or self.settings.default_language
            )
        seed = cookies.get(CSRF_COOKIE)
        new_seed = None
        if (not seed or len(seed) > 100) and not is_machine_path(scope["path"]):
            seed = new_seed = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["csrf_seed"] = seed
        token = i18n.set_language(language)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = list(message.get("headers") or [])
                response_headers.extend(SECURITY_HEADERS)
                response_headers.append((b"content-language", language.encode()))
                if new_seed is not None:
                    secure = "; Secure" if self.settings.secure_cookies else ""
                    cookie = f"{CSRF_COOKIE}={new_seed}; Path=/; HttpOnly; SameSite=Lax{secure}"
                    response_headers.append((b"set-cookie", cookie.encode()))
                message["headers"] = response_headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            i18n._current_language.reset(token)


def is_machine_path(path: str) -> bool:
    """APIs for machines: errors answer JSON, and no CSRF cookie is handed out."""
    return "/api/" in path or path.startswith(("/api", "/ngsi-ld", "/open311"))


def _cookies(scope: Scope) -> dict[str, str]:
    jar: dict[str, str] = {}
    for name, value in scope.get("headers") or []:
        if name == b"cookie":
            parsed = SimpleCookie()
            with contextlib.suppress(Exception):
                parsed.load(value.decode("latin-1"))
            jar.update({key: morsel.value for key, morsel in parsed.items()})
    return jar


async def csrf_protect(request: Request) -> None:
    """Every state-changing request from a browser carries the CSRF token."""
    if request.method in SAFE_METHODS:
        return
    has_session = "communs_session" in request.cookies
    if not has_session and (
        request.headers.get("authorization") or request.url.path.startswith("/open311/")
    ):
        return  # machine clients (Open311 posts forms with its api_key): no ambient credentials
    content_type = request.headers.get("content-type", "")
    submitted = request.headers.get(CSRF_HEADER)
    is_form = content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))
    if is_form and submitted is None:
        settings: Settings = request.app.state.settings
        form = await request.form(max_part_size=settings.upload_max_bytes)
        value = form.get(CSRF_FIELD)
        submitted = value if isinstance(value, str) else None
    elif not is_form and not has_session:
        return  # an anonymous JSON call carries no authority
    seed = request.cookies.get(CSRF_COOKIE)
    if not csrf_valid(request.app.state.settings.secret_key, seed, submitted):
        raise CsrfFailed()


# ---------------------------------------------------------------- errors


def wants_json(request: Request) -> bool:
    if is_machine_path(request.url.path):
        return True
    accept = request.headers.get("accept", "")
    return "json" in accept and "html" not in accept


def error_response(request: Request, status: int, title: str, detail: str = "") -> Response:
    if wants_json(request):
        return JSONResponse({"status": status, "title": title, "detail": detail}, status)
    return render(
        request,
        "core/error.html",
        {"page_title": title, "status": status, "detail": detail},
        status_code=status,
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def on_login_required(request: Request, _error: LoginRequired) -> Response:
        if wants_json(request):
            return JSONResponse(
                {"status": 401, "title": "Unauthorized", "detail": _("Authentification requise.")},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    @app.exception_handler(AccessDenied)
    async def on_access_denied(request: Request, _error: AccessDenied) -> Response:
        return error_response(
            request, 403, _("Accès refusé"), _("Vous n'avez pas accès à cette page.")
        )

    @app.exception_handler(CsrfFailed)
    async def on_csrf(request: Request, _error: CsrfFailed) -> Response:
        return error_response(
            request,
            403,
            _("Formulaire refusé"),
            _(
                "Le jeton de sécurité du formulaire est absent ou invalide. "
                "Rechargez la page et recommencez."
            ),
        )

    @app.exception_handler(CommuneNotFound)
    async def on_commune_not_found(request: Request, _error: CommuneNotFound) -> Response:
        return error_response(request, 404, _("Commune inconnue"))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> Response:
        for prefix, handler in getattr(request.app.state, "http_error_handlers", {}).items():
            if request.url.path.startswith(prefix):
                return await handler(request, error)
        titles = {404: _("Page introuvable"), 405: _("Méthode non autorisée")}
        return error_response(
            request,
            error.status_code,
            titles.get(error.status_code, str(error.detail)),
            str(error.detail) if error.status_code not in titles else "",
        )

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, error: RequestValidationError) -> Response:
        if wants_json(request):
            return JSONResponse(
                {
                    "status": 422,
                    "title": _("Requête invalide"),
                    "errors": orjson.loads(orjson.dumps(error.errors(), default=str)),
                },
                422,
            )
        return error_response(request, 422, _("Requête invalide"))


# ---------------------------------------------------------------- application


def _capability_routers() -> list[Any]:
    modules = [module for name in ("api", "views", "admin") for module in capability_modules(name)]
    return [module.router for module in modules if getattr(module, "router", None) is not None]


def create_app(settings: Settings, db: Database | None = None, *, run_jobs: bool = False):
    database = db or Database(settings.database_url)
    runner = JobRunner(database, settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        load_job_handlers()
        services = background_services(settings, database) if run_jobs else []
        app.state.services = {service.name: service for service in services}
        tasks = [asyncio.create_task(service.run()) for service in services]
        if run_jobs:
            tasks.append(asyncio.create_task(runner.run_forever()))
        try:
            yield
        finally:
            if tasks:
                runner.stop()
                for service in services:
                    service.stop()
                await asyncio.gather(*tasks, return_exceptions=True)
            if db is None:
                database.close()

    app = FastAPI(
        title="Communs",
        version=communs.__version__,
        lifespan=lifespan,
        dependencies=[Depends(csrf_protect)],
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.settings = settings
    app.state.db = database
    app.state.bus = InProcessBus()
    app.state.jobs = runner
    app.state.services = {}
    app.state.templates = make_environment()
    app.state.http_error_handlers = {}
    app.add_middleware(ShellMiddleware, settings=settings)
    for module in capability_modules("fastpath"):
        app.add_middleware(module.FastPath)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_error_handlers(app)
    # Fixed paths first: "/{commune}/…" must not swallow "/admin/…" or "/api/…".
    fixed, per_commune = APIRouter(), APIRouter()
    for module in capability_modules("api"):
        for error_type, handler in getattr(module, "EXCEPTION_HANDLERS", {}).items():
            app.add_exception_handler(error_type, handler)
        # Protocols answer routing errors (404, 405) in their own error format.
        app.state.http_error_handlers.update(getattr(module, "HTTP_ERROR_HANDLERS", {}))
    for router in _capability_routers():
        for route in router.routes:
            target = per_commune if route.path.startswith("/{commune}") else fixed
            target.routes.append(route)
    app.include_router(fixed)
    app.include_router(per_commune)
    app.state.routes = [*fixed.routes, *per_commune.routes]
    return app
