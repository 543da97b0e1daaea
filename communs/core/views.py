"""Public pages of the shell: home, commune home, login, language, legal pages."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from communs.core import addresses, service
from communs.core.auth import SESSION_COOKIE, CommuneContext, commune_public, public
from communs.core.i18n import gettext as _
from communs.core.web import LANGUAGE_COOKIE, redirect, render

router = APIRouter()


def safe_next(url: str | None) -> str:
    """Only local paths: never an open redirect."""
    if not url:
        return "/"
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not url.startswith("/") or url.startswith(("//", "/\\")):
        return "/"
    return url


@router.get("/", response_class=HTMLResponse, dependencies=[Depends(public)])
def home(request: Request) -> HTMLResponse:
    with request.app.state.db.read() as session:
        communes = service.list_communes(session)
    return render(request, "core/home.html", {"page_title": _("Accueil"), "communes": communes})


@router.get("/login", response_class=HTMLResponse, dependencies=[Depends(public)])
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return render(
        request, "core/login.html", {"page_title": _("Connexion"), "next": safe_next(next)}
    )


@router.post("/login", dependencies=[Depends(public)])
def login_submit(
    request: Request,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    settings = request.app.state.settings
    client = request.client.host if request.client else "unknown"
    result = request.app.state.db.write(
        service.login,
        email=email,
        password=password,
        client=client,
        max_failures=settings.login_max_failures,
        lock_seconds=settings.login_lock_seconds,
    )
    if result.token is None:
        if result.locked_until is not None:
            error, status = (
                _("Trop de tentatives de connexion. Réessayez dans quelques minutes."),
                429,
            )
        else:
            error, status = _("Adresse électronique ou mot de passe incorrect."), 401
        return render(
            request,
            "core/login.html",
            {"page_title": _("Connexion"), "next": safe_next(next), "error": error, "email": email},
            status_code=status,
        )
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        result.token,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
        max_age=int(service.SESSION_LIFETIME.total_seconds()),
        path="/",
    )
    return response


@router.post("/logout", dependencies=[Depends(public)])
def logout(request: Request) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        request.app.state.db.write(service.logout, token)
    response = redirect(request, "/", _("Vous êtes déconnecté."))
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/langue/{code}", dependencies=[Depends(public)])
def switch_language(request: Request, code: str, next: str = "/") -> Response:
    response = RedirectResponse(safe_next(next), status_code=303)
    if code in request.app.state.settings.languages:
        response.set_cookie(
            LANGUAGE_COOKIE, code, max_age=365 * 24 * 3600, samesite="lax", path="/"
        )
    return response


def _static_page(template: str, title: str):
    def page(request: Request) -> HTMLResponse:
        return render(request, template, {"page_title": _(title)})

    return page


for _path, _template, _title in (
    ("/accessibilite", "core/accessibility.html", "Déclaration d'accessibilité"),
    ("/mentions-legales", "core/legal.html", "Mentions légales"),
    ("/donnees-personnelles", "core/privacy.html", "Données personnelles"),
):
    router.add_api_route(
        _path,
        _static_page(_template, _title),
        response_class=HTMLResponse,
        dependencies=[Depends(public)],
        name=_template,
    )


@router.get("/{commune}/", response_class=HTMLResponse)
def commune_home(
    request: Request, context: Annotated[CommuneContext, Depends(commune_public())]
) -> HTMLResponse:
    with request.app.state.db.read() as session:
        services = service.list_services(session, context.commune_id)
    return render(
        request,
        "core/commune_home.html",
        {"page_title": context.commune.name, "services": services},
    )


@router.get("/{commune}/adresses/suggestions", response_class=HTMLResponse)
def address_suggestions(
    request: Request,
    context: Annotated[CommuneContext, Depends(commune_public())],
    address: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    """HTML options for the address field (the HTMX side of the component)."""
    with request.app.state.db.read() as session:
        found = addresses.search(session, context.commune_id, address, limit=8)
    return render(request, "core/address_suggestions.html", {"addresses": found})
