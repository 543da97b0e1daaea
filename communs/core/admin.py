"""Administration pages: the instance admin (communes, users, roles, API keys, jobs)
and the commune admin (services, agents)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from communs.core import addresses, jobs, service
from communs.core.auth import (
    COMMUNE_ADMIN,
    CommuneContext,
    commune_access,
    forget_api_keys,
    instance_admin,
)
from communs.core.i18n import gettext as _
from communs.core.models import Address, Role
from communs.core.service import InvalidInput, NotFound
from communs.core.web import redirect, render

router = APIRouter()
ADMIN = [Depends(instance_admin)]


def role_labels() -> dict[str, str]:
    return {
        Role.COMMUNE_ADMIN: _("Administrateur de la commune"),
        Role.AGENT: _("Agent d'un service"),
        Role.OPERATOR: _("Opérateur de supervision"),
        Role.VIEWER: _("Lecteur"),
    }


def form_error(
    request: Request, template: str, context: dict[str, Any], error: InvalidInput
) -> HTMLResponse:
    context = {**context, "error": str(error), "error_field": error.field}
    return render(request, template, context, status_code=422)


# ---------------------------------------------------------------- instance admin


@router.get("/admin/", response_class=HTMLResponse, dependencies=ADMIN)
def admin_home(request: Request) -> HTMLResponse:
    with request.app.state.db.read() as session:
        counts = {
            "communes": len(service.list_communes(session)),
            "users": len(service.list_users(session)),
            "dead_jobs": len(jobs.list_jobs(session, "dead")),
        }
    return render(
        request, "core/admin/index.html", {"page_title": _("Administration"), "counts": counts}
    )


def _communes_page(request: Request, **extra: Any) -> dict[str, Any]:
    with request.app.state.db.read() as session:
        communes = service.list_communes(session)
    return {"page_title": _("Communes"), "communes": communes, "form": {}, **extra}


@router.get("/admin/communes", response_class=HTMLResponse, dependencies=ADMIN)
def communes_page(request: Request) -> HTMLResponse:
    return render(request, "core/admin/communes.html", _communes_page(request))


@router.post("/admin/communes", dependencies=ADMIN)
def create_commune(
    request: Request,
    name: Annotated[str, Form()] = "",
    slug: Annotated[str, Form()] = "",
    insee_code: Annotated[str, Form()] = "",
    boundary: Annotated[str, Form()] = "",
) -> Response:
    form = {"name": name, "slug": slug, "insee_code": insee_code, "boundary": boundary}
    try:
        geometry = _parse_geojson(boundary)
        commune = request.app.state.db.write(
            service.create_commune,
            slug=slug or service.slugify(name),
            name=name,
            insee_code=insee_code,
            boundary=geometry,
        )
    except InvalidInput as error:
        context = _communes_page(request, form=form)
        return form_error(request, "core/admin/communes.html", context, error)
    return redirect(
        request, "/admin/communes", _("La commune {name} est créée.").format(name=commune.name)
    )


@router.get("/admin/communes/{commune_id}", response_class=HTMLResponse, dependencies=ADMIN)
def commune_edit_page(request: Request, commune_id: int) -> HTMLResponse:
    with request.app.state.db.read() as session:
        try:
            target = service.get_commune(session, commune_id)
        except NotFound as error:
            raise HTTPException(404) from error
    form = {
        "name": target.name,
        "boundary": json.dumps(target.boundary) if target.boundary else "",
    }
    return render(
        request,
        "core/admin/commune_edit.html",
        {"page_title": target.name, "target": target, "form": form},
    )


@router.post("/admin/communes/{commune_id}", dependencies=ADMIN)
def commune_edit(
    request: Request,
    commune_id: int,
    name: Annotated[str, Form()] = "",
    boundary: Annotated[str, Form()] = "",
) -> Response:
    try:
        target = request.app.state.db.write(
            service.update_commune, commune_id, name=name, boundary=_parse_geojson(boundary)
        )
    except NotFound as error:
        raise HTTPException(404) from error
    except InvalidInput as error:
        with request.app.state.db.read() as session:
            target = service.get_commune(session, commune_id)
        context = {
            "page_title": target.name,
            "target": target,
            "form": {"name": name, "boundary": boundary},
        }
        return form_error(request, "core/admin/commune_edit.html", context, error)
    return redirect(
        request, "/admin/communes", _("La commune {name} est modifiée.").format(name=target.name)
    )


def _parse_geojson(raw: str) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise InvalidInput(
            _("Le contour n'est pas du JSON valide (ligne {line}).").format(line=error.lineno),
            field="boundary",
        ) from error
    if not isinstance(value, dict):
        raise InvalidInput(_("Le contour doit être un objet GeoJSON."), field="boundary")
    return value


def _users_page(request: Request, **extra: Any) -> dict[str, Any]:
    with request.app.state.db.read() as session:
        users = service.list_users(session)
        communes = service.list_communes(session)
        services = {c.id: service.list_services(session, c.id) for c in communes}
    return {
        "page_title": _("Comptes et rôles"),
        "users": users,
        "communes": communes,
        "services": services,
        "roles": role_labels(),
        "form": {},
        **extra,
    }


@router.get("/admin/users", response_class=HTMLResponse, dependencies=ADMIN)
def users_page(request: Request) -> HTMLResponse:
    return render(request, "core/admin/users.html", _users_page(request))


@router.post("/admin/users", dependencies=ADMIN)
def create_user(
    request: Request,
    email: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    commune_id: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = Role.AGENT,
    service_id: Annotated[str, Form()] = "",
    is_instance_admin: Annotated[bool, Form()] = False,
) -> Response:
    form = {"email": email, "name": name, "commune_id": commune_id, "role": role}

    def unit(session: Any) -> Any:
        user = service.create_user(
            session,
            email=email,
            name=name,
            password=password,
            is_instance_admin=is_instance_admin,
        )
        if commune_id:
            service.grant_role(
                session,
                user_id=user.id,
                commune_id=int(commune_id),
                role=role,
                service_id=int(service_id) if service_id else None,
            )
        return user

    try:
        user = request.app.state.db.write(unit)
    except (InvalidInput, NotFound, ValueError) as error:
        error = (
            error
            if isinstance(error, InvalidInput)
            else InvalidInput(_("Commune ou service inconnu."))
        )
        return form_error(request, "core/admin/users.html", _users_page(request, form=form), error)
    return redirect(
        request, "/admin/users", _("Le compte {email} est créé.").format(email=user.email)
    )


@router.post("/admin/users/{user_id}/roles", dependencies=ADMIN)
def grant_role(
    request: Request,
    user_id: int,
    commune_id: Annotated[int, Form()],
    role: Annotated[str, Form()],
    service_id: Annotated[str, Form()] = "",
) -> Response:
    try:
        request.app.state.db.write(
            service.grant_role,
            user_id=user_id,
            commune_id=commune_id,
            role=role,
            service_id=int(service_id) if service_id else None,
        )
    except InvalidInput as error:
        return redirect(request, "/admin/users", str(error), kind="error")
    except NotFound:
        message = _("Commune, compte ou service inconnu.")
        return redirect(request, "/admin/users", message, kind="error")
    return redirect(request, "/admin/users", _("Le rôle est attribué."))


@router.post("/admin/users/{user_id}/active", dependencies=ADMIN)
def set_user_active(
    request: Request, user_id: int, active: Annotated[bool, Form()] = False
) -> Response:
    if active is False and user_id == request.state.principal.user.id:
        return redirect(
            request,
            "/admin/users",
            _("Vous ne pouvez pas suspendre votre propre compte."),
            kind="error",
        )
    try:
        user = request.app.state.db.write(service.set_user_active, user_id, active)
    except NotFound as error:
        raise HTTPException(404) from error
    message = (
        _("Le compte {email} est rétabli.") if active else _("Le compte {email} est suspendu.")
    )
    return redirect(request, "/admin/users", message.format(email=user.email))


@router.post("/admin/memberships/{membership_id}/delete", dependencies=ADMIN)
def revoke_membership(
    request: Request, membership_id: int, commune_id: Annotated[int, Form()]
) -> Response:
    request.app.state.db.write(service.revoke_role, commune_id, membership_id)
    return redirect(request, "/admin/users", _("Le rôle est retiré."))


def _keys_page(request: Request, **extra: Any) -> dict[str, Any]:
    with request.app.state.db.read() as session:
        keys = service.list_api_keys(session)
        communes = service.list_communes(session)
    return {
        "page_title": _("Clés d'API"),
        "keys": keys,
        "communes": communes,
        "scopes": service.API_SCOPES,
        "form": {},
        **extra,
    }


@router.get("/admin/api-keys", response_class=HTMLResponse, dependencies=ADMIN)
def api_keys_page(request: Request) -> HTMLResponse:
    return render(request, "core/admin/api_keys.html", _keys_page(request))


@router.post("/admin/api-keys", dependencies=ADMIN)
async def create_api_key(request: Request) -> Response:
    form = await request.form()
    scopes = [str(value) for value in form.getlist("scopes")]
    values = {"name": str(form.get("name", "")), "commune_id": str(form.get("commune_id", ""))}
    try:
        if not values["commune_id"].isdigit():
            raise InvalidInput(_("Choisissez une commune."), field="commune_id")
        issued = await request.app.state.db.awrite(
            service.create_api_key,
            commune_id=int(values["commune_id"]),
            name=values["name"],
            scopes=scopes,
        )
    except (InvalidInput, NotFound) as error:
        error = error if isinstance(error, InvalidInput) else InvalidInput(_("Commune inconnue."))
        return form_error(
            request, "core/admin/api_keys.html", _keys_page(request, form=values), error
        )
    # The secret is shown once, on this answer, and never stored in clear.
    return render(request, "core/admin/api_keys.html", _keys_page(request, issued=issued))


@router.post("/admin/api-keys/{key_id}/revoke", dependencies=ADMIN)
def revoke_api_key(request: Request, key_id: int) -> Response:
    try:
        request.app.state.db.write(service.revoke_api_key, key_id)
        forget_api_keys()
    except NotFound:
        return redirect(request, "/admin/api-keys", _("Clé inconnue."), kind="error")
    return redirect(request, "/admin/api-keys", _("La clé est révoquée."))


@router.get("/admin/jobs", response_class=HTMLResponse, dependencies=ADMIN)
def jobs_page(request: Request, status: str = "") -> HTMLResponse:
    with request.app.state.db.read() as session:
        listed = jobs.list_jobs(session, status or None)
    return render(
        request,
        "core/admin/jobs.html",
        {"page_title": _("Tâches de fond"), "jobs": listed, "status": status},
    )


@router.post("/admin/jobs/{job_id}/retry", dependencies=ADMIN)
def retry_job(request: Request, job_id: int) -> Response:
    request.app.state.db.write(jobs.retry_dead, job_id)
    request.app.state.jobs.wake()
    return redirect(request, "/admin/jobs?status=dead", _("La tâche est relancée."))


# ---------------------------------------------------------------- commune admin

CommuneAdmin = Annotated[CommuneContext, Depends(commune_access(roles=COMMUNE_ADMIN))]


def _commune_admin_page(request: Request, context: CommuneContext, **extra: Any) -> dict:
    with request.app.state.db.read() as session:
        services = service.list_services(session, context.commune_id)
        members = service.commune_members(session, context.commune_id)
        address_count = service.count_rows(session, Address, commune_id=context.commune_id)
    return {
        "address_count": address_count,
        "page_title": _("Administration de la commune"),
        "services": services,
        "members": members,
        "roles": role_labels(),
        "form": {},
        **extra,
    }


@router.get("/{commune}/admin/", response_class=HTMLResponse)
def commune_admin(request: Request, context: CommuneAdmin) -> HTMLResponse:
    return render(request, "core/commune_admin.html", _commune_admin_page(request, context))


@router.post("/{commune}/admin/services")
def add_service(
    request: Request, context: CommuneAdmin, name: Annotated[str, Form()] = ""
) -> Response:
    try:
        request.app.state.db.write(service.add_service, context.commune_id, name)
    except InvalidInput as error:
        page = _commune_admin_page(request, context, form={"service_name": name})
        return form_error(request, "core/commune_admin.html", page, error)
    return redirect(request, f"/{context.commune.slug}/admin/", _("Le service est ajouté."))


@router.post("/{commune}/admin/services/{service_id}/rename")
def rename_service(
    request: Request, context: CommuneAdmin, service_id: int, name: Annotated[str, Form()] = ""
) -> Response:
    back = f"/{context.commune.slug}/admin/"
    try:
        request.app.state.db.write(service.rename_service, context.commune_id, service_id, name)
    except (InvalidInput, NotFound) as error:
        message = str(error) if isinstance(error, InvalidInput) else _("Service inconnu.")
        return redirect(request, back, message, kind="error")
    return redirect(request, back, _("Le service est renommé."))


@router.post("/{commune}/admin/services/{service_id}/delete")
def delete_service(request: Request, context: CommuneAdmin, service_id: int) -> Response:
    try:
        request.app.state.db.write(service.delete_service, context.commune_id, service_id)
    except NotFound:
        return redirect(
            request, f"/{context.commune.slug}/admin/", _("Service inconnu."), kind="error"
        )
    except InvalidInput as error:
        return redirect(request, f"/{context.commune.slug}/admin/", str(error), kind="error")
    return redirect(request, f"/{context.commune.slug}/admin/", _("Le service est supprimé."))


@router.post("/{commune}/admin/agents")
def add_agent(
    request: Request,
    context: CommuneAdmin,
    email: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    role: Annotated[str, Form()] = Role.AGENT,
    service_id: Annotated[str, Form()] = "",
) -> Response:
    form = {"email": email, "name": name, "role": role, "service_id": service_id}
    try:
        request.app.state.db.write(
            service.create_agent,
            commune_id=context.commune_id,
            email=email,
            name=name,
            password=password,
            role=role,
            service_id=int(service_id) if service_id.isdigit() else None,
        )
    except (InvalidInput, NotFound) as error:
        error = error if isinstance(error, InvalidInput) else InvalidInput(_("Service inconnu."))
        page = _commune_admin_page(request, context, form=form)
        return form_error(request, "core/commune_admin.html", page, error)
    return redirect(
        request,
        f"/{context.commune.slug}/admin/",
        _("L'agent {email} est ajouté.").format(email=email.strip().lower()),
    )


BAL_CONTENT_TYPES = {
    "text/csv",
    "text/plain",
    "application/vnd.ms-excel",
    "application/octet-stream",
    "",
}


@dataclass
class BalReport:
    imported: int = 0
    errors: list[addresses.RowError] = field(default_factory=list)
    error: str | None = None

    @property
    def error_lines(self) -> list[str]:
        return list(addresses.iter_errors_text(self.errors))


async def _import_bal(request: Request, context: CommuneContext, upload: UploadFile) -> BalReport:
    limit = request.app.state.settings.upload_max_bytes
    content = await upload.read(limit + 1)
    if len(content) > limit:
        return BalReport(
            error=_("Le fichier dépasse la taille maximale de {size} Mo.").format(
                size=limit // (1024 * 1024)
            )
        )
    name = (upload.filename or "").lower()
    content_type = (upload.content_type or "").split(";")[0].strip()
    if not name.endswith(".csv") or content_type not in BAL_CONTENT_TYPES:
        return BalReport(error=_("Le fichier doit être un CSV (extension .csv)."))
    try:
        parsed = await asyncio.to_thread(addresses.parse_bal, content, context.commune)
    except InvalidInput as error:
        return BalReport(error=str(error))
    imported = await request.app.state.db.awrite(
        addresses.replace_addresses, context.commune_id, parsed.rows
    )
    return BalReport(imported=imported, errors=parsed.errors)


@router.post("/{commune}/admin/addresses")
async def import_addresses(
    request: Request, context: CommuneAdmin, bal: Annotated[UploadFile, File()]
) -> Response:
    """Replace the commune's addresses with an uploaded Base Adresse Locale."""
    report = await _import_bal(request, context, bal)
    status = 422 if report.error else 200
    if request.headers.get("hx-request") == "true":
        return render(request, "core/bal_result.html", {"bal_report": report}, status_code=200)
    page = await asyncio.to_thread(_commune_admin_page, request, context, bal_report=report)
    return render(request, "core/commune_admin.html", page, status_code=status)


@router.post("/{commune}/admin/members/{membership_id}/delete")
def remove_member(request: Request, context: CommuneAdmin, membership_id: int) -> Response:
    request.app.state.db.write(service.revoke_role, context.commune_id, membership_id)
    return redirect(request, f"/{context.commune.slug}/admin/", _("Le rôle est retiré."))
