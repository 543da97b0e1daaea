"""Business rules of citizen reports; the only module that writes the reports tables.

Every function takes the commune it works for and filters on it. Each change of a
report is kept in its audit trail (``ReportEvent``) and mirrored in the hub as an
NGSI-LD entity shaped like the Smart Data Models Open311 model
(dataModel.IssueTracking ``service_requests``), in the same transaction.
"""

from __future__ import annotations

import csv
import datetime as dt
import hmac
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import median as statistics_median
from typing import Any

from shapely.geometry import Point, shape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from communs.core.addresses import distance_m
from communs.core.db import utcnow
from communs.core.i18n import lazy_gettext as _l
from communs.core.mail import queue_email
from communs.core.models import Commune, Membership, Service, User
from communs.core.security import new_token
from communs.core.service import InvalidInput, validate_email, validate_name
from communs.hub import service as hub
from communs.hub.context import CORE
from communs.hub.document import parse_entity
from communs.reports import photos
from communs.reports.models import (
    CLOSED,
    Category,
    Channel,
    Follower,
    Photo,
    ReplyTemplate,
    Report,
    ReportEvent,
    ReportSettings,
    Status,
)
from communs.reports.photos import Encoded

MAX_DESCRIPTION = 4000
MAX_ANSWER = 2000
DATATYPES = ("string", "number", "datetime", "text", "singlevaluelist", "multivaluelist")
HUB_TYPE = "service_requests"

# The categories a new commune starts with: (service slug, code, group, name).
DEFAULT_CATEGORIES = (
    ("voirie", "nid-de-poule", "Voirie", "Nid-de-poule"),
    ("voirie", "trottoir-degrade", "Voirie", "Trottoir dégradé"),
    ("eclairage-public", "lampadaire-en-panne", "Éclairage public", "Lampadaire en panne"),
    ("proprete", "depot-sauvage", "Propreté", "Dépôt sauvage"),
    ("proprete", "tags-graffitis", "Propreté", "Tags et graffitis"),
    ("voirie", "mobilier-urbain", "Voirie", "Mobilier urbain endommagé"),
    ("espaces-verts", "espaces-verts", "Espaces verts", "Espaces verts"),
    ("eau", "fuite-eau", "Eau", "Fuite d'eau"),
)


STATUS_LABELS = {
    Status.NEW: _l("Nouveau"),
    Status.ACKNOWLEDGED: _l("Pris en compte"),
    Status.IN_PROGRESS: _l("En cours"),
    Status.PLANNED: _l("Intervention planifiée"),
    Status.RESOLVED: _l("Résolu"),
    Status.NOT_COMPETENT: _l("Clos : hors de la compétence de la commune"),
    Status.DUPLICATE: _l("Clos : doublon d'un autre signalement"),
    Status.WONT_FIX: _l("Clos : ne sera pas traité"),
}


def status_label(status: str) -> str:
    return str(STATUS_LABELS.get(status, status))


# ---------------------------------------------------------------- settings


def settings_of(session: Session, commune_id: int) -> ReportSettings:
    found = session.get(ReportSettings, commune_id)
    return found if found is not None else ReportSettings(commune_id=commune_id)


def set_anonymous_allowed(session: Session, commune_id: int, allowed: bool) -> None:
    found = session.get(ReportSettings, commune_id)
    if found is None:
        found = ReportSettings(commune_id=commune_id)
        session.add(found)
    found.anonymous_allowed = allowed


# ---------------------------------------------------------------- categories


def create_category(
    session: Session,
    commune_id: int,
    *,
    code: str,
    name: str,
    service_id: int,
    group: str = "",
    description: str = "",
    keywords: str = "",
    notice: str = "",
    emergency_notice: str = "",
    attributes: Sequence[dict[str, Any]] = (),
) -> Category:
    code = _category_code(code)
    if category_by_code(session, commune_id, code) is not None:
        raise InvalidInput(
            _l("Une catégorie utilise déjà le code « {code} ».").format(code=code), field="code"
        )
    category = Category(
        commune_id=commune_id,
        service_id=_own_service(session, commune_id, service_id).id,
        code=code,
        name=validate_name(name),
        group=group.strip()[:200],
        description=description.strip(),
        keywords=keywords.strip()[:500],
        notice=notice.strip(),
        emergency_notice=emergency_notice.strip(),
        attributes=validate_attributes(attributes),
    )
    session.add(category)
    session.flush()
    return category


def install_default_categories(session: Session, commune_id: int) -> list[Category]:
    """The usual categories, each routed to the default service of its name; those
    whose service or code the commune no longer has are left out."""
    services = {item.slug: item for item in _services(session, commune_id)}
    made = []
    for service_slug, code, group, name in DEFAULT_CATEGORIES:
        service = services.get(service_slug)
        if service is None or category_by_code(session, commune_id, code) is not None:
            continue
        made.append(
            create_category(
                session, commune_id, code=code, name=name, service_id=service.id, group=group
            )
        )
    return made


def categories(session: Session, commune_id: int, *, active_only: bool = True) -> list[Category]:
    statement = select(Category).where(Category.commune_id == commune_id)
    if active_only:
        statement = statement.where(Category.is_active.is_(True))
    return list(session.scalars(statement.order_by(Category.group, Category.name)))


def category_by_code(session: Session, commune_id: int, code: str) -> Category | None:
    return session.scalar(
        select(Category).where(Category.commune_id == commune_id, Category.code == code)
    )


def validate_attributes(attributes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Extra questions as Open311 attribute definitions, checked and ordered."""
    checked: list[dict[str, Any]] = []
    codes: set[str] = set()
    for position, attribute in enumerate(attributes, start=1):
        code = str(attribute.get("code", "")).strip()
        datatype = attribute.get("datatype", "string")
        if not code or code in codes:
            raise InvalidInput(_l("Chaque question a besoin d'un code unique."), field="attributes")
        if datatype not in DATATYPES:
            raise InvalidInput(
                _l("Type de question inconnu : {datatype}.").format(datatype=datatype),
                field="attributes",
            )
        values = [
            {"key": str(value["key"]), "name": str(value["name"])}
            | ({"blocks": True} if value.get("blocks") else {})
            for value in attribute.get("values") or ()
        ]
        if datatype.endswith("valuelist") and not values:
            raise InvalidInput(
                _l("La question « {code} » propose une liste sans valeurs.").format(code=code),
                field="attributes",
            )
        codes.add(code)
        checked.append(
            {
                "code": code,
                "variable": bool(attribute.get("variable", True)),
                "datatype": datatype,
                "required": bool(attribute.get("required", False)),
                "datatype_description": str(attribute.get("datatype_description") or ""),
                "order": int(attribute.get("order") or position),
                "description": str(attribute.get("description") or code),
                "values": values,
            }
        )
    return sorted(checked, key=lambda attribute: attribute["order"])


def _category_code(code: str) -> str:
    code = (code or "").strip()
    if not code or len(code) > 63 or any(c.isspace() or c in "/?#." for c in code):
        raise InvalidInput(
            _l("Le code d'une catégorie fait 1 à 63 caractères, sans espace ni / ? # ."),
            field="code",
        )
    return code


def _services(session: Session, commune_id: int) -> list[Service]:
    return list(session.scalars(select(Service).where(Service.commune_id == commune_id)))


def _own_service(session: Session, commune_id: int, service_id: int) -> Service:
    found = session.get(Service, service_id)
    if found is None or found.commune_id != commune_id:
        raise InvalidInput(_l("Ce service n'existe pas dans la commune."), field="service_id")
    return found


def set_category_active(session: Session, commune_id: int, category_id: int, active: bool) -> None:
    category = session.get(Category, category_id)
    if category is None or category.commune_id != commune_id:
        raise InvalidInput(_l("Cette catégorie n'existe pas dans la commune."))
    category.is_active = active


# ---------------------------------------------------------------- reply templates


def reply_templates(session: Session, commune_id: int) -> list[ReplyTemplate]:
    statement = select(ReplyTemplate).where(ReplyTemplate.commune_id == commune_id)
    return list(session.scalars(statement.order_by(ReplyTemplate.title)))


def save_reply_template(session: Session, commune_id: int, title: str, text: str) -> ReplyTemplate:
    """A new template, or the new text of the template of that title."""
    title = validate_name(title, "title")
    text = _required(text, "text")
    found = session.scalar(
        select(ReplyTemplate).where(
            ReplyTemplate.commune_id == commune_id, ReplyTemplate.title == title
        )
    )
    if found is None:
        found = ReplyTemplate(commune_id=commune_id, title=title, text=text)
        session.add(found)
    found.text = text
    session.flush()
    return found


def delete_reply_template(session: Session, commune_id: int, template_id: int) -> None:
    found = session.get(ReplyTemplate, template_id)
    if found is not None and found.commune_id == commune_id:
        session.delete(found)


def template_text(session: Session, commune_id: int, template_id: int | None) -> str:
    found = session.get(ReplyTemplate, template_id) if template_id else None
    return found.text if found is not None and found.commune_id == commune_id else ""


# ---------------------------------------------------------------- filing a report


@dataclass
class Submission:
    """What a resident, an agent at the counter or an Open311 client sends."""

    category_code: str
    description: str
    lon: float | None
    lat: float | None
    address: str = ""
    answers: dict[str, Any] = field(default_factory=dict)
    email: str = ""
    first_name: str = ""
    last_name: str = ""
    phone: str = ""
    device_id: str = ""
    channel: str = Channel.WEB
    photos: list[Encoded] = field(default_factory=list)


class Blocked(InvalidInput):
    """An answer that stops the report: the category's emergency notice says what to do."""


def commune_at(session: Session, lon: float, lat: float) -> Commune | None:
    """The commune whose boundary holds the point."""
    candidates = session.scalars(
        select(Commune).where(
            Commune.min_lon <= lon,
            Commune.max_lon >= lon,
            Commune.min_lat <= lat,
            Commune.max_lat >= lat,
        )
    )
    point = Point(lon, lat)
    for commune in candidates:
        if commune.boundary and shape(commune.boundary).covers(point):
            return commune
    return None


def create_report(
    session: Session,
    commune_id: int,
    submission: Submission,
    *,
    actor_user_id: int | None = None,
    base_url: str = "",
) -> Report:
    """File a report. Everything is checked before anything is written. A resident
    who must give an e-mail (no anonymous reports) confirms it by the link sent there:
    until then the report is neither public nor in the service's queue."""
    category = _category_for(session, commune_id, submission.category_code)
    description = _description(submission.description)
    lon, lat = _point_in_commune(session, commune_id, submission.lon, submission.lat)
    answers = check_answers(category, submission.answers)
    email = validate_email(submission.email) if submission.email.strip() else ""
    channel = _channel(submission.channel)
    photos.check_count(len(submission.photos))
    anonymous_allowed = settings_of(session, commune_id).anonymous_allowed
    anonymous = not email and channel in (Channel.WEB, Channel.OPEN311)
    if anonymous and not anonymous_allowed:
        raise InvalidInput(
            _l("Indiquez votre adresse e-mail : la commune n'accepte pas de signalement anonyme."),
            field="email",
        )
    needs_confirmation = channel == Channel.WEB and not anonymous_allowed
    now = utcnow()
    report = Report(
        confirmed=not needs_confirmation,
        commune_id=commune_id,
        category_id=category.id,
        service_id=category.service_id,
        status=Status.NEW,
        description=description,
        lon=lon,
        lat=lat,
        address=submission.address.strip()[:400],
        answers=answers,
        channel=channel,
        email=email,
        first_name=submission.first_name.strip()[:100],
        last_name=submission.last_name.strip()[:100],
        phone=submission.phone.strip()[:40],
        device_id=submission.device_id.strip()[:100],
        tracking_token=new_token(),
        requested_at=now,
        updated_at=now,
    )
    session.add(report)
    session.flush()
    for encoded in submission.photos:
        add_photo(session, report, encoded)
    if email:  # a new report has no follower yet
        session.add(Follower(report_id=report.id, email=email, unsubscribe_token=new_token()))
    _record(session, report, "created", public=True, actor_user_id=actor_user_id)
    publish_to_hub(session, report, category)
    if needs_confirmation:
        _queue(
            session,
            report,
            email,
            _l("Confirmez votre signalement n° {number}").format(number=report.id),
            _l(
                "Bonjour,\n\nPour transmettre votre signalement n° {number} ({category}) au "
                "service concerné, confirmez-le en ouvrant ce lien :\n{link}\n\n"
                "Sans confirmation, il ne sera pas transmis."
            ).format(
                number=report.id,
                category=category.name,
                link=f"{base_url}{report_path(session, report)}/confirmer/{report.tracking_token}",
            ),
        )
    return report


def confirm_report(session: Session, commune_id: int, report_id: int, token: str) -> Report:
    report = get_report(session, commune_id, report_id)
    if report is None or not same_secret(report.tracking_token, token):
        raise InvalidInput(_l("Ce lien de confirmation n'est pas valide."))
    if not report.confirmed:
        report.confirmed = True
        report.updated_at = utcnow()
        _record(session, report, "confirmed", public=False, actor_user_id=None)
        publish_to_hub(session, report)
    return report


def report_path(session: Session, report: Report) -> str:
    return f"/{_slug(session, report)}/signalements/{report.id}"


def same_secret(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), (given or "").encode())


def _queue(session: Session, report: Report, to: str, subject: Any, body: Any) -> None:
    queue_email(session, to=to, subject=str(subject), body=str(body), commune_id=report.commune_id)


def check_answers(category: Category, answers: dict[str, Any]) -> dict[str, Any]:
    """The answers to the category's questions, checked against their definitions."""
    checked: dict[str, Any] = {}
    for attribute in category.attributes:
        code = attribute["code"]
        raw = answers.get(code)
        empty = raw is None or raw == "" or raw == []
        if empty:
            if attribute["required"] and attribute["variable"]:
                raise InvalidInput(
                    _l("Répondez à la question « {question} ».").format(
                        question=attribute["description"]
                    ),
                    field=f"attribute[{code}]",
                )
            continue
        checked[code] = _answer(attribute, raw)
        if any(
            value.get("blocks") and value["key"] in _as_list(checked[code])
            for value in attribute["values"]
        ):
            raise Blocked(
                category.emergency_notice
                or _l(
                    "Ce problème ne peut pas être signalé ici : appelez le 112 en cas d'urgence."
                ),
                field=f"attribute[{code}]",
            )
    return checked


def _answer(attribute: dict[str, Any], raw: Any) -> Any:
    datatype, code = attribute["datatype"], attribute["code"]
    where = f"attribute[{code}]"
    if datatype == "number":
        try:
            number = float(raw)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise InvalidInput(
                _l("« {question} » attend un nombre.").format(question=attribute["description"]),
                field=where,
            )
        return number
    if datatype == "datetime":
        try:
            return dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00")).isoformat()
        except ValueError:
            raise InvalidInput(
                _l("« {question} » attend une date.").format(question=attribute["description"]),
                field=where,
            ) from None
    if datatype.endswith("valuelist"):
        keys = {value["key"] for value in attribute["values"]}
        chosen = [str(item) for item in _as_list(raw)]
        if (
            not chosen
            or any(item not in keys for item in chosen)
            or (datatype == "singlevaluelist" and len(chosen) > 1)
        ):
            raise InvalidInput(
                _l("Choisissez une réponse proposée pour « {question} ».").format(
                    question=attribute["description"]
                ),
                field=where,
            )
        return chosen[0] if datatype == "singlevaluelist" else chosen
    text = str(raw).strip()
    if len(text) > MAX_ANSWER:
        raise InvalidInput(
            _l("La réponse à « {question} » dépasse {limit} caractères.").format(
                question=attribute["description"], limit=MAX_ANSWER
            ),
            field=where,
        )
    return text


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _category_for(session: Session, commune_id: int, code: str) -> Category:
    if not (code or "").strip():
        raise InvalidInput(_l("Choisissez une catégorie."), field="service_code")
    category = category_by_code(session, commune_id, code.strip())
    if category is None or not category.is_active:
        raise InvalidInput(
            _l("La catégorie « {code} » n'existe pas dans cette commune.").format(code=code),
            field="service_code",
        )
    return category


def _description(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise InvalidInput(_l("Décrivez le problème."), field="description")
    if len(text) > MAX_DESCRIPTION:
        raise InvalidInput(
            _l("La description dépasse {limit} caractères ({length}).").format(
                limit=MAX_DESCRIPTION, length=len(text)
            ),
            field="description",
        )
    return text


def _point_in_commune(
    session: Session, commune_id: int, lon: float | None, lat: float | None
) -> tuple[float, float]:
    if lon is None or lat is None or not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise InvalidInput(
            _l("Placez le problème : saisissez une adresse ou choisissez un point sur la carte."),
            field="location",
        )
    commune = session.get(Commune, commune_id)
    if (
        commune is not None
        and commune.boundary
        and not shape(commune.boundary).covers(Point(lon, lat))
    ):
        elsewhere = commune_at(session, lon, lat)
        if elsewhere is None:
            raise InvalidInput(
                _l("Ce point n'est dans aucune commune desservie par ce service."),
                field="location",
            )
        raise InvalidInput(
            _l("Ce point est à {other}, pas à {commune} : signalez-le à {other}.").format(
                other=elsewhere.name, commune=commune.name
            ),
            field="location",
        )
    return lon, lat


def _channel(channel: str) -> str:
    try:
        return Channel(channel)
    except ValueError:
        raise InvalidInput(
            _l("Canal inconnu : {channel}.").format(channel=channel), field="channel"
        ) from None


def follow(session: Session, report: Report, email: str) -> Follower:
    email = validate_email(email)
    found = session.scalar(
        select(Follower).where(Follower.report_id == report.id, Follower.email == email)
    )
    if found is not None:
        return found
    follower = Follower(report_id=report.id, email=email, unsubscribe_token=new_token())
    session.add(follower)
    session.flush()
    return follower


def add_photo(session: Session, report: Report, encoded: Encoded, kind: str = "report") -> Photo:
    photo = Photo(
        report_id=report.id,
        commune_id=report.commune_id,
        kind=kind,
        width=encoded.width,
        height=encoded.height,
        content=encoded.content,
    )
    session.add(photo)
    session.flush()
    return photo


def visible_photo_ids(
    session: Session, commune_id: int, report_ids: Iterable[int]
) -> dict[int, list[int]]:
    """The public photos of these reports, in the order they were added."""
    ids = list(report_ids)
    found: dict[int, list[int]] = {report_id: [] for report_id in ids}
    if not ids:
        return found
    statement = (
        select(Photo.report_id, Photo.id)
        .where(Photo.commune_id == commune_id, Photo.report_id.in_(ids), Photo.hidden.is_(False))
        .order_by(Photo.id)
    )
    for report_id, photo_id in session.execute(statement):
        found[report_id].append(photo_id)
    return found


def public_photo(session: Session, commune_id: int, report_id: int, photo_id: int) -> Photo | None:
    photo = session.get(Photo, photo_id)
    if photo is None or photo.commune_id != commune_id or photo.report_id != report_id:
        return None
    report = session.get(Report, report_id)
    if photo.hidden or report is None or report.hidden or not report.confirmed:
        return None
    return photo


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReportFilter:
    ids: tuple[int, ...] = ()
    category_codes: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()  # detailed statuses
    requested_from: dt.datetime | None = None
    requested_until: dt.datetime | None = None
    updated_after: dt.datetime | None = None
    updated_before: dt.datetime | None = None
    service_ids: tuple[int, ...] | None = None  # None: every service
    include_hidden: bool = False
    offset: int = 0
    limit: int = 1000


def find_reports(session: Session, commune_id: int, wanted: ReportFilter) -> list[Report]:
    """The commune's reports, newest first."""
    statement = select(Report).where(Report.commune_id == commune_id)
    if wanted.ids:
        statement = statement.where(Report.id.in_(wanted.ids))
    if wanted.category_codes:
        statement = statement.join(Category, Category.id == Report.category_id).where(
            Category.code.in_(wanted.category_codes)
        )
    if wanted.statuses:
        statement = statement.where(Report.status.in_(wanted.statuses))
    if wanted.requested_from is not None:
        statement = statement.where(Report.requested_at >= wanted.requested_from)
    if wanted.requested_until is not None:
        statement = statement.where(Report.requested_at <= wanted.requested_until)
    if wanted.updated_after is not None:
        statement = statement.where(Report.updated_at > wanted.updated_after)
    if wanted.updated_before is not None:
        statement = statement.where(Report.updated_at < wanted.updated_before)
    if wanted.service_ids is not None:
        statement = statement.where(Report.service_id.in_(wanted.service_ids))
    statement = statement.where(Report.confirmed.is_(True))
    if not wanted.include_hidden:
        statement = statement.where(Report.hidden.is_(False))
    statement = statement.order_by(Report.requested_at.desc(), Report.id.desc())
    return list(session.scalars(statement.offset(wanted.offset).limit(wanted.limit)))


def open_reports_near(
    session: Session, commune_id: int, category_code: str, lon: float, lat: float, metres: float
) -> list[Report]:
    """Public open reports of this category within ``metres`` of the point, nearest first."""
    category = category_by_code(session, commune_id, category_code)
    if category is None:
        return []
    dlat = metres / 111_320
    dlon = metres / (111_320 * max(math.cos(math.radians(lat)), 0.01))
    candidates = session.scalars(
        select(Report).where(
            Report.commune_id == commune_id,
            Report.category_id == category.id,
            Report.status.not_in(CLOSED),
            Report.hidden.is_(False),
            Report.confirmed.is_(True),
            Report.lon.between(lon - dlon, lon + dlon),
            Report.lat.between(lat - dlat, lat + dlat),
        )
    )
    near = [(distance_m(lon, lat, r.lon, r.lat), r) for r in candidates]
    return [
        report for distance, report in sorted(near, key=lambda pair: pair[0]) if distance <= metres
    ]


def all_events(session: Session, commune_id: int, report_id: int) -> list[ReportEvent]:
    """The whole audit trail of a report (back-office), oldest first."""
    statement = (
        select(ReportEvent)
        .where(ReportEvent.commune_id == commune_id, ReportEvent.report_id == report_id)
        .order_by(ReportEvent.id)
    )
    return list(session.scalars(statement))


def get_report(session: Session, commune_id: int, report_id: int) -> Report | None:
    found = session.get(Report, report_id)
    return found if found is not None and found.commune_id == commune_id else None


def categories_by_id(session: Session, commune_id: int) -> dict[int, Category]:
    return {c.id: c for c in categories(session, commune_id, active_only=False)}


def service_names(session: Session, commune_id: int) -> dict[int, str]:
    return {item.id: item.name for item in _services(session, commune_id)}


def public_events(
    session: Session, commune_id: int, report_ids: Iterable[int]
) -> dict[int, list[ReportEvent]]:
    """The public history of these reports, oldest first."""
    ids = list(report_ids)
    found: dict[int, list[ReportEvent]] = {report_id: [] for report_id in ids}
    if not ids:
        return found
    statement = (
        select(ReportEvent)
        .where(
            ReportEvent.commune_id == commune_id,
            ReportEvent.report_id.in_(ids),
            ReportEvent.public.is_(True),
        )
        .order_by(ReportEvent.id)
    )
    for event in session.scalars(statement):
        found[event.report_id].append(event)
    return found


def updates_since(
    session: Session,
    commune_id: int,
    *,
    after: dt.datetime | None,
    before: dt.datetime | None,
    limit: int,
) -> list[ReportEvent]:
    """Public changes of the commune's reports, oldest first (the FixMyStreet
    ``servicerequestupdates`` feed)."""
    statement = (
        select(ReportEvent)
        .join(Report, Report.id == ReportEvent.report_id)
        .where(
            ReportEvent.commune_id == commune_id,
            ReportEvent.public.is_(True),
            Report.hidden.is_(False),
            Report.confirmed.is_(True),
        )
    )
    if after is not None:
        statement = statement.where(ReportEvent.created_at > after)
    if before is not None:
        statement = statement.where(ReportEvent.created_at < before)
    return list(session.scalars(statement.order_by(ReportEvent.id).limit(limit)))


def count_reports(session: Session, commune_id: int) -> int:
    return session.scalar(select(func.count()).where(Report.commune_id == commune_id)) or 0


# ---------------------------------------------------------------- statistics


@dataclass
class Statistics:
    """Reports per category and month; median days to acknowledge and to resolve per
    service; the share of resolved reports that their reporter reopened."""

    per_category_month: dict[tuple[str, str], int]
    months: list[str]
    acknowledge_days: dict[str, float]
    resolve_days: dict[str, float]
    resolved: int
    reopened: int

    @property
    def reopened_share(self) -> float:
        return self.reopened / self.resolved if self.resolved else 0.0


def statistics(session: Session, commune_id: int, since: dt.datetime) -> Statistics:
    categories = categories_by_id(session, commune_id)
    names = service_names(session, commune_id)
    rows = session.execute(
        select(
            Report.category_id,
            Report.service_id,
            Report.requested_at,
            Report.acknowledged_at,
            Report.closed_at,
            Report.status,
        ).where(
            Report.commune_id == commune_id,
            Report.confirmed.is_(True),
            Report.requested_at >= since,
        )
    ).all()
    counts: dict[tuple[str, str], int] = {}
    acknowledge: dict[str, list[float]] = {}
    resolve: dict[str, list[float]] = {}
    for category_id, service_id, requested, acknowledged, closed, status in rows:
        month = requested.strftime("%Y-%m")
        key = (categories[category_id].name, month)
        counts[key] = counts.get(key, 0) + 1
        agency = names.get(service_id, "")
        if acknowledged is not None:
            acknowledge.setdefault(agency, []).append(_days(acknowledged - requested))
        if status == Status.RESOLVED and closed is not None:
            resolve.setdefault(agency, []).append(_days(closed - requested))
    resolved, reopened = _reopen_counts(session, commune_id, since)
    return Statistics(
        per_category_month=counts,
        months=sorted({month for _name, month in counts}),
        acknowledge_days={k: round(statistics_median(v), 1) for k, v in acknowledge.items()},
        resolve_days={k: round(statistics_median(v), 1) for k, v in resolve.items()},
        resolved=resolved,
        reopened=reopened,
    )


def _days(delta: dt.timedelta) -> float:
    return delta.total_seconds() / 86_400


def _reopen_counts(session: Session, commune_id: int, since: dt.datetime) -> tuple[int, int]:
    """Reports resolved at least once, and those of them reopened, since ``since``."""

    def reports_with(condition: Any) -> int:
        statement = select(func.count(func.distinct(ReportEvent.report_id))).where(
            ReportEvent.commune_id == commune_id, ReportEvent.created_at >= since, condition
        )
        return session.scalar(statement) or 0

    resolved = reports_with(ReportEvent.status == Status.RESOLVED)
    return resolved, reports_with(ReportEvent.kind == "reopened")


def statistics_csv(stats: Statistics) -> str:
    """The figures as one long table (indicator, service, category, month, value),
    semicolon-separated as French spreadsheets expect."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\r\n")
    writer.writerow(["indicateur", "service", "categorie", "mois", "valeur"])
    for (category, month), count in sorted(stats.per_category_month.items()):
        writer.writerow(["signalements", "", category, month, count])
    for agency, days in sorted(stats.acknowledge_days.items()):
        writer.writerow(["delai_median_prise_en_compte_jours", agency, "", "", days])
    for agency, days in sorted(stats.resolve_days.items()):
        writer.writerow(["delai_median_resolution_jours", agency, "", "", days])
    writer.writerow(["part_rouverts", "", "", "", round(stats.reopened_share, 4)])
    return out.getvalue()


# ---------------------------------------------------------------- acting on a report


def set_status(
    session: Session,
    report: Report,
    status: str,
    *,
    actor_user_id: int | None,
    text: str = "",
    expected_at: dt.datetime | None = None,
    duplicate_of: int | None = None,
    base_url: str = "",
) -> ReportEvent:
    """Move a report to ``status``; ``text`` is the public reply that goes with it."""
    try:
        status = Status(status)
    except ValueError:
        raise InvalidInput(_l("Statut inconnu : {status}.").format(status=status)) from None
    if status == Status.PLANNED and expected_at is None:
        raise InvalidInput(_l("Indiquez la date prévue de l'intervention."), field="expected_at")
    if status == Status.DUPLICATE:
        original = get_report(session, report.commune_id, duplicate_of or 0)
        if original is None or original.id == report.id:
            raise InvalidInput(
                _l("Indiquez le numéro du signalement dont celui-ci est le doublon."),
                field="duplicate_of",
            )
        report.duplicate_of_id = original.id
    now = utcnow()
    if status == Status.ACKNOWLEDGED and report.acknowledged_at is None:
        report.acknowledged_at = now
    report.expected_at = expected_at if status == Status.PLANNED else report.expected_at
    report.closed_at = now if status in CLOSED else None
    report.status = status
    if text.strip():
        report.status_notes = text.strip()[:MAX_DESCRIPTION]
    report.updated_at = now
    event = _record(
        session, report, "status", public=True, actor_user_id=actor_user_id, text=text.strip()
    )
    publish_to_hub(session, report)
    notify_followers(session, report, event, base_url)
    return event


def notify_followers(session: Session, report: Report, event: ReportEvent, base_url: str) -> None:
    """An e-mail to each follower about a public change, through the outbox. After
    "resolved", the reporter is asked whether it really is fixed."""
    path = report_path(session, report)
    subject = _l("Signalement n° {number} : {status}").format(
        number=report.id, status=status_label(report.status)
    )
    reply_label = str(_l("Réponse du service :"))
    reply = f"\n\n{reply_label}\n{event.text}" if event.text else ""
    followers = session.scalars(select(Follower).where(Follower.report_id == report.id))
    for follower in followers:
        check = ""
        if report.status == Status.RESOLVED and follower.email == report.email:
            check = "\n\n" + str(
                _l("Est-ce vraiment réparé ? Dites-le nous : {link}").format(
                    link=f"{base_url}{path}/verifier/{report.tracking_token}"
                )
            )
        body = _l(
            "Bonjour,\n\nLe signalement n° {number} est maintenant : {status}.{reply}{check}"
            "\n\nSuivre le signalement : {link}\nNe plus recevoir ces messages : {stop}"
        ).format(
            number=report.id,
            status=status_label(report.status),
            reply=reply,
            check=check,
            link=f"{base_url}{path}",
            stop=f"{base_url}{path}/desabonner/{follower.unsubscribe_token}",
        )
        _queue(session, report, follower.email, subject, body)


def answer_fixed(
    session: Session, commune_id: int, report_id: int, token: str, fixed: bool, base_url: str = ""
) -> Report:
    """The reporter's answer to "is it really fixed?": no reopens the report and tells
    the service's agents."""
    report = get_report(session, commune_id, report_id)
    if report is None or not same_secret(report.tracking_token, token):
        raise InvalidInput(_l("Ce lien n'est pas valide."))
    if fixed or report.status != Status.RESOLVED:
        return report
    report.status = Status.NEW
    report.closed_at = None
    report.updated_at = utcnow()
    text = str(_l("Le demandeur indique que le problème n'est pas réglé."))
    event = _record(session, report, "reopened", public=True, actor_user_id=None, text=text)
    publish_to_hub(session, report)
    for email in _service_agent_emails(session, report):
        _queue(
            session,
            report,
            email,
            _l("Signalement n° {number} rouvert").format(number=report.id),
            f"{text}\n\n{base_url}/{_slug(session, report)}/admin/signalements/{report.id}",
        )
    notify_followers(session, report, event, base_url)
    return report


def _service_agent_emails(session: Session, report: Report) -> list[str]:
    statement = (
        select(User.email)
        .join(Membership, Membership.user_id == User.id)
        .where(
            Membership.commune_id == report.commune_id,
            Membership.service_id == report.service_id,
            User.is_active.is_(True),
        )
    )
    return sorted(set(session.scalars(statement)))


def _slug(session: Session, report: Report) -> str:
    commune = session.get(Commune, report.commune_id)
    return commune.slug if commune else ""


def unfollow(session: Session, commune_id: int, report_id: int, token: str) -> bool:
    follower = session.scalar(select(Follower).where(Follower.unsubscribe_token == token))
    report = get_report(session, commune_id, report_id)
    if follower is None or report is None or follower.report_id != report.id:
        return False
    session.delete(follower)
    return True


def _record(
    session: Session,
    report: Report,
    kind: str,
    *,
    public: bool,
    actor_user_id: int | None,
    text: str = "",
    data: dict[str, Any] | None = None,
) -> ReportEvent:
    event = ReportEvent(
        report_id=report.id,
        commune_id=report.commune_id,
        kind=kind,
        status=report.status,
        text=text,
        public=public,
        actor_user_id=actor_user_id,
        data=data or {},
        created_at=report.updated_at,
    )
    session.add(event)
    return event


def change_category(
    session: Session, report: Report, category_code: str, *, actor_user_id: int | None
) -> ReportEvent:
    """Re-file the report under another category: it moves to that category's service."""
    category = _category_for(session, report.commune_id, category_code)
    before = report.category_id
    report.category_id, report.service_id = category.id, category.service_id
    report.updated_at = utcnow()
    event = _record(
        session,
        report,
        "category",
        public=False,
        actor_user_id=actor_user_id,
        text=category.name,
        data={"from": before, "to": category.id},
    )
    publish_to_hub(session, report, category)
    return event


def assign(
    session: Session, report: Report, user_id: int | None, *, actor_user_id: int | None
) -> ReportEvent:
    """Give the report to an agent of the commune (None: to nobody)."""
    name = ""
    if user_id is not None:
        member = session.scalar(
            select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(User.id == user_id, Membership.commune_id == report.commune_id)
        )
        if member is None:
            raise InvalidInput(_l("Cet agent n'appartient pas à la commune."), field="user_id")
        name = member.name
    report.assigned_user_id = user_id
    report.updated_at = utcnow()
    return _record(
        session, report, "assigned", public=False, actor_user_id=actor_user_id, text=name
    )


def add_note(
    session: Session, report: Report, text: str, *, actor_user_id: int | None
) -> ReportEvent:
    """An internal note: in the audit trail, never shown to the public."""
    text = _required(text, "note")
    report.updated_at = utcnow()
    return _record(session, report, "note", public=False, actor_user_id=actor_user_id, text=text)


def reply(
    session: Session, report: Report, text: str, *, actor_user_id: int | None, base_url: str = ""
) -> ReportEvent:
    """A public reply, without a change of status; followers receive it."""
    text = _required(text, "reply")
    report.status_notes = text
    report.updated_at = utcnow()
    event = _record(session, report, "reply", public=True, actor_user_id=actor_user_id, text=text)
    publish_to_hub(session, report)
    notify_followers(session, report, event, base_url)
    return event


def merge(
    session: Session,
    duplicate: Report,
    original_id: int,
    *,
    actor_user_id: int | None,
    base_url: str = "",
) -> Report:
    """Close ``duplicate`` as a duplicate of the original; its followers (the reporter
    included) follow the original from now on."""
    original = get_report(session, duplicate.commune_id, original_id)
    if original is None or original.id == duplicate.id or original.status == Status.DUPLICATE:
        raise InvalidInput(
            _l("Indiquez le numéro du signalement dont celui-ci est le doublon."),
            field="duplicate_of",
        )
    set_status(
        session,
        duplicate,
        Status.DUPLICATE,
        actor_user_id=actor_user_id,
        text=str(_l("Ce signalement est suivi sous le n° {number}.").format(number=original.id)),
        duplicate_of=original.id,
        base_url=base_url,
    )
    followers = session.scalars(select(Follower).where(Follower.report_id == duplicate.id))
    for follower in list(followers):
        follow(session, original, follower.email)
    _record(
        session,
        original,
        "merged",
        public=False,
        actor_user_id=actor_user_id,
        text=str(duplicate.id),
        data={"duplicate": duplicate.id},
    )
    return original


def moderate(
    session: Session,
    report: Report,
    *,
    actor_user_id: int | None,
    description: str | None = None,
    hide_report: bool | None = None,
    hide_photo_id: int | None = None,
) -> ReportEvent:
    """Redact the description, hide a photo, or hide (or show again) the report."""
    changes: dict[str, Any] = {}
    if description is not None and description.strip() != report.description:
        report.description = _description(description)
        changes["description"] = "redacted"
    if hide_photo_id is not None:
        photo = session.get(Photo, hide_photo_id)
        if photo is None or photo.report_id != report.id:
            raise InvalidInput(_l("Cette photo n'appartient pas au signalement."))
        photo.hidden = True
        changes["photo_hidden"] = photo.id
    if hide_report is not None and hide_report != report.hidden:
        report.hidden = hide_report
        changes["hidden"] = hide_report
    if not changes:
        raise InvalidInput(_l("Rien à modérer : aucun changement demandé."))
    report.updated_at = utcnow()
    event = _record(
        session, report, "moderated", public=False, actor_user_id=actor_user_id, data=changes
    )
    publish_to_hub(session, report)
    return event


def _required(text: str, field_name: str) -> str:
    text = (text or "").strip()
    if not text:
        raise InvalidInput(_l("Ce texte ne peut pas être vide."), field=field_name)
    if len(text) > MAX_DESCRIPTION:
        raise InvalidInput(
            _l("Ce texte dépasse {limit} caractères.").format(limit=MAX_DESCRIPTION),
            field=field_name,
        )
    return text


def commune_agents(session: Session, commune_id: int) -> list[User]:
    statement = (
        select(User)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.commune_id == commune_id, User.is_active.is_(True))
        .order_by(User.name)
    )
    return list(dict.fromkeys(session.scalars(statement)))


# ---------------------------------------------------------------- one city model


def open311_status(status: str) -> str:
    return "closed" if status in CLOSED else "open"


def hub_entity_id(report: Report) -> str:
    return f"urn:ngsi-ld:{HUB_TYPE}:{report.id}"


def publish_to_hub(session: Session, report: Report, category: Category | None = None) -> None:
    """Mirror the report in the hub (no personal data); a hidden or unconfirmed report
    leaves it."""
    if report.hidden or not report.confirmed:
        hub.delete_entities(session, report.commune_id, [hub_entity_id(report)])
        return
    category = category or session.get(Category, report.category_id)
    names = session.execute(
        select(Commune.slug, Service.name)
        .join(Service, Service.commune_id == Commune.id)
        .where(Commune.id == report.commune_id, Service.id == report.service_id)
    ).first()
    slug, agency = names if names is not None else ("", "")
    values: dict[str, Any] = {
        "service_request_id": str(report.id),
        "jurisdiction_id": slug,
        "service_code": category.code if category else "",
        "service_name": category.name if category else "",
        "agency_responsible": agency,
        "status": open311_status(report.status),
        "status_notes": report.status_notes,
        "description": report.description,
        "address_string": report.address,
        "requested_datetime": _datetime_value(report.requested_at),
        "updated_datetime": _datetime_value(report.updated_at),
    }
    if report.expected_at is not None:
        values["expected_datetime"] = _datetime_value(report.expected_at)
    entity = {
        "id": hub_entity_id(report),
        "type": HUB_TYPE,
        "location": {
            "type": "GeoProperty",
            "value": {"type": "Point", "coordinates": [report.lon, report.lat]},
        },
        **{name: {"type": "Property", "value": value} for name, value in values.items() if value},
    }
    hub.upsert_entities(session, report.commune_id, [parse_entity(entity, CORE)], replace=True)


def w3c_time(moment: dt.datetime | None) -> str | None:
    """A moment as Open311 and the hub write it: UTC, to the second, with a Z."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _datetime_value(moment: dt.datetime) -> dict[str, str | None]:
    return {"@type": "DateTime", "@value": w3c_time(moment)}
