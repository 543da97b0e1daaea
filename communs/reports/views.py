"""Pages of citizen reports: reporting (residents), public map and list, report pages,
follow and confirm links, and the agents' back-office."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import deque
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from communs.core import addresses
from communs.core.auth import (
    ALL_STAFF,
    COMMUNE_ADMIN,
    AccessDenied,
    CommuneContext,
    commune_access,
    commune_public,
)
from communs.core.db import utcnow
from communs.core.i18n import gettext as _
from communs.core.models import Role
from communs.core.service import InvalidInput
from communs.core.web import redirect, render
from communs.reports import photos, service
from communs.reports.models import CLOSED, OPEN, Channel, Report, Status

router = APIRouter()
Public = Annotated[CommuneContext, Depends(commune_public())]
Staff = Annotated[CommuneContext, Depends(commune_access(roles=ALL_STAFF))]

PERIODS = {"7": 7, "30": 30, "90": 90, "365": 365}
NEARBY_METRES = 50
RATE_WINDOW_SECONDS = 600
RATE_MAX_REPORTS = 10


def navigation_items(commune: Any, principal: Any) -> list[tuple[str, str]]:
    """The reports' entries of the site's menu for this commune."""
    items = [(f"/{commune.slug}/signalements", _("Signalements"))]
    if principal.has_role(commune.id, ALL_STAFF):
        items.append((f"/{commune.slug}/admin/signalements", _("Signalements à traiter")))
    return items


# ---------------------------------------------------------------- helpers


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per client (in this process)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self.events: dict[str, deque[float]] = {}

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        seen = self.events.setdefault(client, deque())
        while seen and now - seen[0] > self.window:
            seen.popleft()
        if len(seen) >= self.limit:
            return False
        seen.append(now)
        if len(self.events) > 10_000:  # forget idle clients
            self.events = {k: v for k, v in self.events.items() if v and now - v[-1] < self.window}
        return True


REPORT_LIMITER = RateLimiter(RATE_MAX_REPORTS, RATE_WINDOW_SECONDS)


def client_key(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _base(request: Request) -> str:
    return request.app.state.settings.base_url


def status_choices() -> list[tuple[str, str]]:
    return [(status.value, service.status_label(status)) for status in Status]


def _statuses_of(state: str) -> tuple[str, ...]:
    """The statuses of a page's "état" filter; none: every status."""
    return tuple({"ouverts": OPEN, "clos": CLOSED}.get(state, ()))


def _error_context(error: InvalidInput | None) -> dict[str, Any]:
    """What a form page shows of a refused submission."""
    return {"error": str(error) if error else None, "error_field": error.field if error else None}


def _grouped(categories: list[Any]) -> list[tuple[str, list[Any]]]:
    groups: dict[str, list[Any]] = {}
    for category in categories:
        groups.setdefault(category.group or _("Autres"), []).append(category)
    return list(groups.items())


def _float(raw: Any) -> float | None:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if value == value else None


# ---------------------------------------------------------------- reporting


@router.get("/{commune}/signalements/nouveau", response_class=HTMLResponse)
def report_form(request: Request, context: Public) -> HTMLResponse:
    return _form_page(request, context, {})


def _form_page(
    request: Request,
    context: CommuneContext,
    values: dict[str, Any],
    error: InvalidInput | None = None,
) -> HTMLResponse:
    with request.app.state.db.read() as session:
        categories = service.categories(session, context.commune_id)
        anonymous = service.settings_of(session, context.commune_id).anonymous_allowed
    chosen = next((c for c in categories if c.code == values.get("service_code")), None)
    return render(
        request,
        "reports/form.html",
        {
            "page_title": _("Signaler un problème"),
            "groups": _grouped(categories),
            "chosen": chosen,
            "values": values,
            "anonymous": anonymous,
            **_error_context(error),
        },
        status_code=400 if error else 200,
    )


@router.get("/{commune}/signalements/questions", response_class=HTMLResponse)
def category_questions(request: Request, context: Public, service_code: str = "") -> HTMLResponse:
    """The extra questions and notice of a category (HTMX, when the category changes)."""
    with request.app.state.db.read() as session:
        chosen = service.category_by_code(session, context.commune_id, service_code)
    return render(request, "reports/_questions.html", {"chosen": chosen, "values": {}})


@router.get("/{commune}/signalements/proches", response_class=HTMLResponse)
def nearby_reports(
    request: Request, context: Public, lon: str = "", lat: str = "", categorie: str = ""
) -> HTMLResponse:
    """Open reports of the same category within 50 m: follow one instead of filing anew."""
    point = (_float(lon), _float(lat))
    found: list[Report] = []
    if None not in point and categorie:
        with request.app.state.db.read() as session:
            found = service.open_reports_near(
                session, context.commune_id, categorie, point[0], point[1], NEARBY_METRES
            )
    return render(request, "reports/_nearby.html", {"nearby": found})


@router.post("/{commune}/signalements/nouveau")
async def submit_report(request: Request, context: Public) -> Response:
    form = await request.form(max_part_size=request.app.state.settings.upload_max_bytes)
    values = {key: value for key, value in form.items() if isinstance(value, str)}
    if not REPORT_LIMITER.allow(client_key(request)):
        error = InvalidInput(
            _("Trop de signalements envoyés depuis cette connexion : réessayez dans 10 minutes.")
        )
        response = _form_page(request, context, values, error)
        response.status_code = 429
        return response
    try:
        lon, lat, address = _location(request, context.commune_id, values)
        submission = service.Submission(
            category_code=values.get("service_code", ""),
            description=values.get("description", ""),
            lon=lon,
            lat=lat,
            address=address,
            answers={
                key[len("attribute[") : -1]: form.getlist(key)
                if len(form.getlist(key)) > 1
                else value
                for key, value in values.items()
                if key.startswith("attribute[") and key.endswith("]")
            },
            email=values.get("email", ""),
            first_name=values.get("name", ""),
            channel=Channel.WEB,
            photos=await photos.read_uploads(form.getlist("photos")),
        )
        report = await request.app.state.db.awrite(
            service.create_report, context.commune_id, submission, base_url=_base(request)
        )
    except InvalidInput as error:
        return _form_page(request, context, values, error)
    return redirect(
        request, f"/{context.commune.slug}/signalements/{report.id}/recu/{report.tracking_token}"
    )


def _location(
    request: Request, commune_id: int, values: dict[str, str]
) -> tuple[float | None, float | None, str]:
    """The point: from the map (lon/lat), else from the address typed."""
    address = values.get("address", "").strip()
    lon, lat = _float(values.get("lon")), _float(values.get("lat"))
    if lon is not None and lat is not None:
        return lon, lat, address
    if not address:
        return None, None, ""
    with request.app.state.db.read() as session:
        found = addresses.search(session, commune_id, address, limit=1)
    if not found:
        raise InvalidInput(
            _("Adresse introuvable : choisissez-la dans la liste ou placez le point sur la carte."),
            field="address",
        )
    return found[0].lon, found[0].lat, found[0].label


@router.get("/{commune}/signalements/{report_id:int}/recu/{token}", response_class=HTMLResponse)
def receipt(request: Request, context: Public, report_id: int, token: str) -> HTMLResponse:
    with request.app.state.db.read() as session:
        report = service.get_report(session, context.commune_id, report_id)
    if report is None or not service.same_secret(report.tracking_token, token):
        return render(
            request,
            "core/error.html",
            {"page_title": _("Lien invalide"), "status": 404},
            status_code=404,
        )
    return render(
        request,
        "reports/receipt.html",
        {"page_title": _("Signalement envoyé"), "report": report},
    )


@router.get("/{commune}/signalements/{report_id}/confirmer/{token}", response_class=HTMLResponse)
async def confirm(request: Request, context: Public, report_id: int, token: str) -> Response:
    try:
        await request.app.state.db.awrite(
            service.confirm_report, context.commune_id, report_id, token
        )
    except InvalidInput as error:
        return render(
            request,
            "core/error.html",
            {"page_title": _("Lien invalide"), "status": 404, "detail": str(error)},
            status_code=404,
        )
    return redirect(
        request,
        f"/{context.commune.slug}/signalements/{report_id}",
        _("Merci : votre signalement est confirmé et transmis au service."),
    )


# ---------------------------------------------------------------- public map, list, page


@router.get("/{commune}/signalements", response_class=HTMLResponse)
def report_list(
    request: Request,
    context: Public,
    categorie: str = "",
    etat: str = "",
    periode: str = "90",
) -> HTMLResponse:
    days = PERIODS.get(periode, 90)
    statuses = _statuses_of(etat)
    wanted = service.ReportFilter(
        category_codes=(categorie,) if categorie else (),
        statuses=statuses,
        requested_from=utcnow() - dt.timedelta(days=days),
        limit=500,
    )
    with request.app.state.db.read() as session:
        reports = service.find_reports(session, context.commune_id, wanted)
        categories = service.categories_by_id(session, context.commune_id)
    return render(
        request,
        "reports/list.html",
        {
            "page_title": _("Signalements"),
            "reports": reports,
            "categories": categories,
            "filters": {"categorie": categorie, "etat": etat, "periode": str(days)},
            "status_label": service.status_label,
            "points": [
                {"id": r.id, "lon": r.lon, "lat": r.lat, "label": categories[r.category_id].name}
                for r in reports
            ],
        },
    )


@router.get("/{commune}/signalements/{report_id:int}", response_class=HTMLResponse)
def report_page(request: Request, context: Public, report_id: int) -> HTMLResponse:
    with request.app.state.db.read() as session:
        report = service.get_report(session, context.commune_id, report_id)
        if report is None or report.hidden or not report.confirmed:
            return render(
                request,
                "core/error.html",
                {"page_title": _("Signalement introuvable"), "status": 404},
                status_code=404,
            )
        category = service.categories_by_id(session, context.commune_id)[report.category_id]
        events = service.public_events(session, context.commune_id, [report.id])[report.id]
        photo_ids = service.visible_photo_ids(session, context.commune_id, [report.id])[report.id]
    return render(
        request,
        "reports/report.html",
        {
            "page_title": _("Signalement n° {number}").format(number=report.id),
            "report": report,
            "category": category,
            "events": events,
            "photos": photo_ids,
            "status_label": service.status_label,
        },
    )


@router.post("/{commune}/signalements/{report_id:int}/suivre")
async def follow_report(request: Request, context: Public, report_id: int) -> Response:
    form = await request.form()
    email = str(form.get("email", ""))
    page = f"/{context.commune.slug}/signalements/{report_id}"

    def follow(session: Any) -> None:
        report = service.get_report(session, context.commune_id, report_id)
        if report is None or report.hidden or not report.confirmed:
            raise InvalidInput(_("Signalement introuvable."))
        service.follow(session, report, email)

    try:
        await request.app.state.db.awrite(follow)
    except InvalidInput as error:
        return redirect(request, page, str(error), kind="error")
    return redirect(
        request, page, _("Vous recevrez par e-mail chaque évolution de ce signalement.")
    )


@router.get("/{commune}/signalements/{report_id}/desabonner/{token}", response_class=HTMLResponse)
async def unfollow(request: Request, context: Public, report_id: int, token: str) -> Response:
    done = await request.app.state.db.awrite(service.unfollow, context.commune_id, report_id, token)
    message = (
        _("Vous ne recevrez plus de message sur ce signalement.")
        if done
        else _("Ce lien de désabonnement n'est plus valide.")
    )
    return redirect(request, f"/{context.commune.slug}/signalements/{report_id}", message)


@router.get("/{commune}/signalements/{report_id:int}/verifier/{token}", response_class=HTMLResponse)
def fixed_question(request: Request, context: Public, report_id: int, token: str) -> HTMLResponse:
    return render(
        request,
        "reports/fixed.html",
        {"page_title": _("Est-ce vraiment réparé ?"), "report_id": report_id, "token": token},
    )


@router.post("/{commune}/signalements/{report_id:int}/verifier/{token}")
async def fixed_answer(request: Request, context: Public, report_id: int, token: str) -> Response:
    form = await request.form()
    fixed = form.get("repare") == "oui"
    page = f"/{context.commune.slug}/signalements/{report_id}"
    try:
        await request.app.state.db.awrite(
            service.answer_fixed,
            context.commune_id,
            report_id,
            token,
            fixed,
            base_url=_base(request),
        )
    except InvalidInput as error:
        return redirect(request, page, str(error), kind="error")
    message = (
        _("Merci de votre confirmation.")
        if fixed
        else _("Merci : le signalement est rouvert et le service est prévenu.")
    )
    return redirect(request, page, message)


@router.get("/{commune}/signalements/{report_id:int}/photos/{photo_id:int}.jpg")
def photo(request: Request, context: Public, report_id: int, photo_id: int) -> Response:
    with request.app.state.db.read() as session:
        found = service.public_photo(session, context.commune_id, report_id, photo_id)
    if found is None:
        return Response(status_code=404)
    return Response(
        found.content,
        media_type="image/jpeg",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/{commune}/signalements/statistiques", response_class=HTMLResponse)
def statistics_page(request: Request, context: Public, periode: str = "365") -> HTMLResponse:
    days = PERIODS.get(periode, 365)
    with request.app.state.db.read() as session:
        stats = service.statistics(session, context.commune_id, utcnow() - dt.timedelta(days=days))
    categories = sorted({name for name, _month in stats.per_category_month})
    return render(
        request,
        "reports/statistics.html",
        {
            "page_title": _("Statistiques des signalements"),
            "stats": stats,
            "categories": categories,
            "period": str(days),
        },
    )


@router.get("/{commune}/signalements/statistiques.csv")
def statistics_export(request: Request, context: Public, periode: str = "365") -> Response:
    days = PERIODS.get(periode, 365)
    with request.app.state.db.read() as session:
        stats = service.statistics(session, context.commune_id, utcnow() - dt.timedelta(days=days))
    name = f"signalements-{context.commune.slug}-{days}j.csv"
    return Response(
        "\ufeff" + service.statistics_csv(stats),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ---------------------------------------------------------------- back-office


def handled_services(context: CommuneContext) -> set[int] | None:
    """The services whose reports this person handles; None: all of the commune's."""
    principal = context.principal
    if principal.is_instance_admin or principal.api_key is not None:
        return None
    memberships = [m for m in principal.user.memberships if m.commune_id == context.commune_id]
    if any(m.role == Role.COMMUNE_ADMIN or m.service_id is None for m in memberships):
        return None
    return {m.service_id for m in memberships if m.service_id is not None}


def _handled(context: CommuneContext, report: Report | None) -> Report:
    if report is None:
        raise HTTPException(404)
    services = handled_services(context)
    if services is not None and report.service_id not in services:
        raise AccessDenied("report of another service")
    return report


@router.get("/{commune}/admin/signalements", response_class=HTMLResponse)
def queue(
    request: Request, context: Staff, etat: str = "ouverts", categorie: str = ""
) -> HTMLResponse:
    services = handled_services(context)
    statuses = _statuses_of(etat)
    wanted = service.ReportFilter(
        category_codes=(categorie,) if categorie else (),
        statuses=statuses,
        service_ids=tuple(services) if services is not None else None,
        include_hidden=True,
        limit=500,
    )
    with request.app.state.db.read() as session:
        reports = service.find_reports(session, context.commune_id, wanted)
        categories = service.categories_by_id(session, context.commune_id)
        names = service.service_names(session, context.commune_id)
    points = [
        {"id": r.id, "lon": r.lon, "lat": r.lat, "label": categories[r.category_id].name}
        for r in reports
    ]
    return render(
        request,
        "reports/queue.html",
        {
            "page_title": _("Signalements à traiter"),
            "reports": reports,
            "categories": categories,
            "service_names": names,
            "filters": {"etat": etat, "categorie": categorie},
            "status_label": service.status_label,
            "statuses": status_choices(),
            "points": points,
        },
    )


@router.get("/{commune}/admin/signalements/{report_id:int}", response_class=HTMLResponse)
def agent_report(request: Request, context: Staff, report_id: int) -> HTMLResponse:
    with request.app.state.db.read() as session:
        report = _handled(context, service.get_report(session, context.commune_id, report_id))
        events = service.all_events(session, context.commune_id, report.id)
        categories = service.categories_by_id(session, context.commune_id)
        photo_ids = service.visible_photo_ids(session, context.commune_id, [report.id])[report.id]
        agents = service.commune_agents(session, context.commune_id)
        templates = service.reply_templates(session, context.commune_id)
    return render(
        request,
        "reports/agent_report.html",
        {
            "page_title": _("Signalement n° {number}").format(number=report.id),
            "report": report,
            "category": categories[report.category_id],
            "events": events,
            "photos": photo_ids,
            "statuses": status_choices(),
            "status_label": service.status_label,
            "categories_list": list(categories.values()),
            "agents": agents,
            "templates": templates,
        },
    )


@router.post("/{commune}/admin/signalements/{report_id:int}/statut")
async def change_status(request: Request, context: Staff, report_id: int) -> Response:
    """A new status with its public reply; "resolved" may carry a proof photo."""
    form = await request.form(max_part_size=request.app.state.settings.upload_max_bytes)
    page = f"/{context.commune.slug}/admin/signalements/{report_id}"

    def act(session: Any, proofs: list[Any]) -> None:
        report = _handled(context, service.get_report(session, context.commune_id, report_id))
        expected = str(form.get("expected_at") or "")
        duplicate = str(form.get("duplicate_of") or "")
        for proof in proofs:
            service.add_photo(session, report, proof, kind="proof")
        service.set_status(
            session,
            report,
            str(form.get("status", "")),
            actor_user_id=_actor(context),
            text=_reply_text(session, context, form),
            expected_at=_date(expected),
            duplicate_of=int(duplicate) if duplicate.isdigit() else None,
            base_url=_base(request),
        )

    try:
        proofs = await photos.read_uploads(form.getlist("proof"))
        await request.app.state.db.awrite(act, proofs)
    except InvalidInput as error:
        return redirect(request, page, str(error), kind="error")
    return redirect(request, page, _("Statut enregistré ; les abonnés sont prévenus."))


def _actor(context: CommuneContext) -> int | None:
    return context.principal.user.id if context.principal.user else None


def _optional_int(raw: Any) -> int | None:
    text = str(raw or "").strip()
    return int(text) if text.isdigit() else None


def _act_category(session: Any, report: Report, form: Any, context: CommuneContext, base: str):
    service.change_category(
        session, report, str(form.get("service_code", "")), actor_user_id=_actor(context)
    )
    return _("Catégorie changée : le signalement est transmis au service concerné.")


def _act_assign(session: Any, report: Report, form: Any, context: CommuneContext, base: str):
    service.assign(
        session, report, _optional_int(form.get("user_id")), actor_user_id=_actor(context)
    )
    return _("Attribution enregistrée.")


def _act_note(session: Any, report: Report, form: Any, context: CommuneContext, base: str):
    service.add_note(session, report, str(form.get("note", "")), actor_user_id=_actor(context))
    return _("Note interne ajoutée.")


def _reply_text(session: Any, context: CommuneContext, form: Any) -> str:
    """The reply typed, else the text of the template chosen."""
    typed = str(form.get("reply", "")).strip()
    if typed:
        return typed
    return service.template_text(session, context.commune_id, _optional_int(form.get("template")))


def _act_reply(session: Any, report: Report, form: Any, context: CommuneContext, base: str):
    service.reply(
        session,
        report,
        _reply_text(session, context, form),
        actor_user_id=_actor(context),
        base_url=base,
    )
    return _("Réponse publiée ; les abonnés sont prévenus.")


def _act_merge(session: Any, report: Report, form: Any, context: CommuneContext, base: str):
    original = _optional_int(form.get("duplicate_of"))
    service.merge(session, report, original or 0, actor_user_id=_actor(context), base_url=base)
    return _("Doublon fusionné : ses abonnés suivent désormais le signalement d'origine.")


def _act_moderate(session: Any, report: Report, form: Any, context: CommuneContext, base: str):
    visibility = str(form.get("visibility", ""))
    description = form.get("description")
    service.moderate(
        session,
        report,
        actor_user_id=_actor(context),
        description=str(description) if description is not None else None,
        hide_report={"hide": True, "show": False}.get(visibility),
        hide_photo_id=_optional_int(form.get("hide_photo")),
    )
    return _("Modération enregistrée.")


ACTIONS = {
    "categorie": _act_category,
    "attribution": _act_assign,
    "note": _act_note,
    "reponse": _act_reply,
    "fusion": _act_merge,
    "moderation": _act_moderate,
}


@router.post("/{commune}/admin/signalements/{report_id:int}/action/{action}")
async def report_action(request: Request, context: Staff, report_id: int, action: str) -> Response:
    """The back-office actions other than a status change, each in the audit trail."""
    act = ACTIONS.get(action)
    if act is None:
        raise HTTPException(404)
    form = await request.form()
    page = f"/{context.commune.slug}/admin/signalements/{report_id}"

    def run(session: Any) -> str:
        report = _handled(context, service.get_report(session, context.commune_id, report_id))
        return act(session, report, form, context, _base(request))

    try:
        message = await request.app.state.db.awrite(run)
    except InvalidInput as error:
        return redirect(request, page, str(error), kind="error")
    return redirect(request, page, message)


@router.post("/{commune}/admin/signalements/lot")
async def bulk_status(request: Request, context: Staff) -> Response:
    """One status (and reply) for the reports ticked in the queue."""
    form = await request.form()
    ids = [int(value) for value in form.getlist("ids") if str(value).isdigit()]
    queue_page = f"/{context.commune.slug}/admin/signalements"

    def run(session: Any) -> int:
        reports = [
            _handled(context, service.get_report(session, context.commune_id, report_id))
            for report_id in ids
        ]
        for report in reports:
            service.set_status(
                session,
                report,
                str(form.get("status", "")),
                actor_user_id=_actor(context),
                text=str(form.get("reply", "")),
                base_url=_base(request),
            )
        return len(reports)

    if not ids:
        return redirect(request, queue_page, _("Cochez au moins un signalement."), kind="error")
    try:
        count = await request.app.state.db.awrite(run)
    except InvalidInput as error:
        return redirect(request, queue_page, str(error), kind="error")
    return redirect(
        request, queue_page, _("{count} signalement(s) mis à jour.").format(count=count)
    )


@router.get("/{commune}/admin/signalements/nouveau", response_class=HTMLResponse)
def counter_form(request: Request, context: Staff) -> HTMLResponse:
    return _counter_page(request, context, {})


def _counter_page(
    request: Request,
    context: CommuneContext,
    values: dict[str, Any],
    error: InvalidInput | None = None,
) -> HTMLResponse:
    with request.app.state.db.read() as session:
        categories = service.categories(session, context.commune_id)
    return render(
        request,
        "reports/counter.html",
        {
            "page_title": _("Saisir un signalement pour un usager"),
            "groups": _grouped(categories),
            "values": values,
            "channels": [
                (Channel.PHONE, _("Téléphone")),
                (Channel.COUNTER, _("Accueil (guichet)")),
                (Channel.EMAIL, _("Courrier électronique")),
            ],
            **_error_context(error),
        },
        status_code=400 if error else 200,
    )


@router.post("/{commune}/admin/signalements/nouveau")
async def counter_submit(request: Request, context: Staff) -> Response:
    """An agent files a report for a caller or a visitor; the channel is recorded."""
    form = await request.form()
    values = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        lon, lat, address = _location(request, context.commune_id, values)
        submission = service.Submission(
            category_code=values.get("service_code", ""),
            description=values.get("description", ""),
            lon=lon,
            lat=lat,
            address=address,
            email=values.get("email", ""),
            first_name=values.get("name", ""),
            phone=values.get("phone", ""),
            channel=values.get("channel", Channel.COUNTER),
        )
        if submission.channel == Channel.WEB or submission.channel not in set(Channel):
            raise InvalidInput(_("Choisissez le canal par lequel l'usager s'est adressé à vous."))
        report = await request.app.state.db.awrite(
            service.create_report,
            context.commune_id,
            submission,
            actor_user_id=_actor(context),
            base_url=_base(request),
        )
    except InvalidInput as error:
        return _counter_page(request, context, values, error)
    return redirect(
        request,
        f"/{context.commune.slug}/admin/signalements/{report.id}",
        _("Signalement n° {number} enregistré.").format(number=report.id),
    )


# ---------------------------------------------------------------- commune settings

CommuneAdmin = Annotated[CommuneContext, Depends(commune_access(roles=COMMUNE_ADMIN))]


@router.get("/{commune}/admin/signalements/reglages", response_class=HTMLResponse)
def settings_page(request: Request, context: CommuneAdmin) -> HTMLResponse:
    return _settings_page(request, context, {})


def _settings_page(
    request: Request,
    context: CommuneContext,
    values: dict[str, Any],
    error: InvalidInput | None = None,
) -> HTMLResponse:
    with request.app.state.db.read() as session:
        categories = service.categories(session, context.commune_id, active_only=False)
        templates = service.reply_templates(session, context.commune_id)
        names = service.service_names(session, context.commune_id)
        anonymous = service.settings_of(session, context.commune_id).anonymous_allowed
    return render(
        request,
        "reports/settings.html",
        {
            "page_title": _("Réglages des signalements"),
            "categories": categories,
            "templates": templates,
            "service_names": names,
            "anonymous": anonymous,
            "values": values,
            **_error_context(error),
        },
        status_code=400 if error else 200,
    )


async def _settings_action(
    request: Request, context: CommuneContext, unit: Any, message: str
) -> Response:
    form = await request.form()
    values = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        await request.app.state.db.awrite(unit, values)
    except InvalidInput as error:
        return _settings_page(request, context, values, error)
    return redirect(request, f"/{context.commune.slug}/admin/signalements/reglages", message)


@router.post("/{commune}/admin/signalements/reglages/categories")
async def add_category(request: Request, context: CommuneAdmin) -> Response:
    def unit(session: Any, values: dict[str, str]) -> None:
        try:
            questions = json.loads(values.get("attributes") or "[]")
        except ValueError:
            raise InvalidInput(
                _("Les questions doivent être une liste JSON de définitions Open311."),
                field="attributes",
            ) from None
        if not isinstance(questions, list) or not all(isinstance(q, dict) for q in questions):
            raise InvalidInput(
                _("Les questions doivent être une liste JSON de définitions Open311."),
                field="attributes",
            )
        service.create_category(
            session,
            context.commune_id,
            code=values.get("code", ""),
            name=values.get("name", ""),
            service_id=_optional_int(values.get("service_id")) or 0,
            group=values.get("group", ""),
            description=values.get("description", ""),
            notice=values.get("notice", ""),
            emergency_notice=values.get("emergency_notice", ""),
            attributes=questions,
        )

    return await _settings_action(request, context, unit, _("Catégorie ajoutée."))


@router.post("/{commune}/admin/signalements/reglages/categories/usuelles")
async def install_usual_categories(request: Request, context: CommuneAdmin) -> Response:
    def unit(session: Any, _values: dict[str, str]) -> None:
        service.install_default_categories(session, context.commune_id)

    return await _settings_action(request, context, unit, _("Catégories usuelles ajoutées."))


@router.post("/{commune}/admin/signalements/reglages/categories/{category_id:int}/active")
async def toggle_category(request: Request, context: CommuneAdmin, category_id: int) -> Response:
    def unit(session: Any, values: dict[str, str]) -> None:
        service.set_category_active(
            session, context.commune_id, category_id, values.get("active") == "1"
        )

    return await _settings_action(request, context, unit, _("Catégorie mise à jour."))


@router.post("/{commune}/admin/signalements/reglages/modeles")
async def save_template(request: Request, context: CommuneAdmin) -> Response:
    def unit(session: Any, values: dict[str, str]) -> None:
        service.save_reply_template(
            session, context.commune_id, values.get("title", ""), values.get("text", "")
        )

    return await _settings_action(request, context, unit, _("Modèle de réponse enregistré."))


@router.post("/{commune}/admin/signalements/reglages/modeles/{template_id:int}/supprimer")
async def delete_template(request: Request, context: CommuneAdmin, template_id: int) -> Response:
    def unit(session: Any, _values: dict[str, str]) -> None:
        service.delete_reply_template(session, context.commune_id, template_id)

    return await _settings_action(request, context, unit, _("Modèle de réponse supprimé."))


@router.post("/{commune}/admin/signalements/reglages/anonymes")
async def set_anonymous(request: Request, context: CommuneAdmin) -> Response:
    def unit(session: Any, values: dict[str, str]) -> None:
        service.set_anonymous_allowed(session, context.commune_id, values.get("allowed") == "1")

    return await _settings_action(request, context, unit, _("Réglage enregistré."))


def _date(raw: str) -> dt.datetime | None:
    if not raw:
        return None
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(_("Date invalide."), field="expected_at") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
