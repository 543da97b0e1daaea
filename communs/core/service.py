"""Business rules of the core; the only module that writes the core's tables.

Each function taking a ``Session`` is a unit of work meant for ``Database.write``
(or a read through ``Database.read``). Invalid input raises ``InvalidInput`` with a
French, translatable message, before anything is written.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from shapely.geometry import shape
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from communs.core.db import utcnow
from communs.core.i18n import lazy_gettext as _l
from communs.core.mail import queue_email
from communs.core.models import (
    ApiKey,
    Commune,
    LoginThrottle,
    Membership,
    Role,
    Service,
    User,
    UserKind,
    WebSession,
)
from communs.core.security import (
    WeakPassword,
    api_key_matches,
    api_key_prefix,
    check_password_strength,
    generate_api_key,
    hash_password,
    new_token,
    token_hash,
    verify_password,
)

DEFAULT_SERVICES = (
    ("voirie", "Voirie"),
    ("proprete", "Propreté"),
    ("eclairage-public", "Éclairage public"),
    ("eau", "Eau et assainissement"),
    ("espaces-verts", "Espaces verts"),
)

# Capabilities an API key may be granted, as "<capability>:<read|write>".
API_SCOPES = (
    "addresses:read",
    "communes:read",
    "hub:read",
    "hub:write",
    "reports:read",
    "reports:write",
    "alerts:write",
    "opendata:write",
)

# Path segments that a commune slug may not take, since the site uses them.
RESERVED_SLUGS = {
    "admin",
    "api",
    "static",
    "login",
    "logout",
    "langue",
    "healthz",
    "readyz",
    "accessibilite",
    "mentions-legales",
    "donnees-personnelles",
    "ngsi-ld",
    "open311",
    "docs",
    "openapi.json",
    "compte",
}

SESSION_LIFETIME = dt.timedelta(hours=12)
MAX_LOCK = dt.timedelta(hours=1)

SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
INSEE_RE = re.compile(r"^(?:(?:0[1-9]|1\d|2[1-9]|[3-8]\d|9[0-5])\d{3}|2[AB]\d{3}|97[1-6]\d{2})$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class InvalidInput(ValueError):
    """Input refused, with a French (translatable) message for the person."""

    def __init__(self, message: Any, field: str | None = None) -> None:
        super().__init__(str(message))
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return str(self.message)


class NotFound(LookupError):
    pass


# ---------------------------------------------------------------- validation


def slugify(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:63]


def validate_slug(slug: str) -> str:
    slug = slug.strip().lower()
    if not SLUG_RE.match(slug) or "--" in slug:
        raise InvalidInput(
            _l(
                "L'identifiant « {slug} » n'est pas valide : lettres minuscules sans accent, "
                "chiffres et tirets uniquement."
            ).format(slug=slug),
            field="slug",
        )
    if slug in RESERVED_SLUGS:
        raise InvalidInput(
            _l("L'identifiant « {slug} » est réservé par la plateforme.").format(slug=slug),
            field="slug",
        )
    return slug


def validate_insee_code(code: str) -> str:
    code = code.strip().upper()
    if not INSEE_RE.match(code):
        raise InvalidInput(
            _l(
                "Le code INSEE « {code} » n'est pas valide : il compte 5 caractères, "
                "le numéro du département (01 à 95, 2A, 2B ou 971 à 976) suivi du numéro "
                "de la commune."
            ).format(code=code),
            field="insee_code",
        )
    return code


def validate_boundary(geojson: dict[str, Any] | None) -> dict[str, Any] | None:
    """A commune boundary: a valid GeoJSON Polygon or MultiPolygon in WGS 84."""
    if geojson is None:
        return None
    if geojson.get("type") == "Feature":
        geojson = geojson.get("geometry") or {}
    if geojson.get("type") not in ("Polygon", "MultiPolygon"):
        raise InvalidInput(
            _l("Le contour doit être un Polygon ou un MultiPolygon GeoJSON."), field="boundary"
        )
    try:
        geometry = shape(geojson)
    except (ValueError, TypeError, AttributeError, IndexError) as error:
        raise InvalidInput(
            _l("Le contour GeoJSON est illisible : {error}").format(error=error),
            field="boundary",
        ) from error
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    if not (-180 <= min_lon <= max_lon <= 180 and -90 <= min_lat <= max_lat <= 90):
        raise InvalidInput(
            _l("Le contour doit être en longitude/latitude WGS 84."), field="boundary"
        )
    if geometry.is_empty or not geometry.is_valid:
        raise InvalidInput(
            _l("Le contour n'est pas un polygone valide (il se recoupe ou est vide)."),
            field="boundary",
        )
    return {"type": geojson["type"], "coordinates": geojson["coordinates"]}


def validate_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 254:
        raise InvalidInput(
            _l("L'adresse électronique « {email} » n'est pas valide.").format(email=email),
            field="email",
        )
    return email


def validate_name(name: str, field: str = "name") -> str:
    name = " ".join(name.split())
    if not name or len(name) > 200:
        raise InvalidInput(_l("Le nom est obligatoire (200 caractères au plus)."), field=field)
    return name


# ---------------------------------------------------------------- communes


def create_commune(
    session: Session,
    *,
    slug: str,
    name: str,
    insee_code: str,
    boundary: dict[str, Any] | None = None,
    services: Iterable[tuple[str, str]] = DEFAULT_SERVICES,
) -> Commune:
    slug = validate_slug(slug)
    name = validate_name(name)
    insee_code = validate_insee_code(insee_code)
    boundary = validate_boundary(boundary)
    if session.scalar(select(Commune.id).where(Commune.slug == slug)) is not None:
        raise InvalidInput(
            _l("Une commune utilise déjà l'identifiant « {slug} ».").format(slug=slug),
            field="slug",
        )
    if session.scalar(select(Commune.id).where(Commune.insee_code == insee_code)) is not None:
        raise InvalidInput(
            _l("Une commune porte déjà le code INSEE {code}.").format(code=insee_code),
            field="insee_code",
        )
    commune = Commune(slug=slug, name=name, insee_code=insee_code)
    _set_boundary(commune, boundary)
    commune.services = [Service(slug=s, name=n) for s, n in services]
    session.add(commune)
    _flush(session)
    return commune


def update_commune(
    session: Session,
    commune_id: int,
    *,
    name: str | None = None,
    boundary: dict[str, Any] | None = None,
) -> Commune:
    commune = get_commune(session, commune_id)
    if name is not None:
        commune.name = validate_name(name)
    if boundary is not None:
        _set_boundary(commune, validate_boundary(boundary))
    return commune


def _set_boundary(commune: Commune, boundary: dict[str, Any] | None) -> None:
    commune.boundary = boundary
    if boundary is None:
        commune.min_lon = commune.min_lat = commune.max_lon = commune.max_lat = None
        return
    commune.min_lon, commune.min_lat, commune.max_lon, commune.max_lat = shape(boundary).bounds


def get_commune(session: Session, commune_id: int) -> Commune:
    commune = session.get(Commune, commune_id)
    if commune is None:
        raise NotFound(f"commune {commune_id}")
    return commune


def commune_by_slug(session: Session, slug: str) -> Commune | None:
    return session.scalar(select(Commune).where(Commune.slug == slug.lower()))


def commune_by_insee(session: Session, insee_code: str) -> Commune | None:
    return session.scalar(select(Commune).where(Commune.insee_code == insee_code.upper()))


def list_communes(session: Session, ids: Iterable[int] | None = None) -> list[Commune]:
    query = select(Commune).order_by(Commune.name)
    if ids is not None:
        query = query.where(Commune.id.in_(list(ids)))
    return list(session.scalars(query))


# ---------------------------------------------------------------- services


def list_services(session: Session, commune_id: int) -> list[Service]:
    services = session.scalars(select(Service).where(Service.commune_id == commune_id))
    # Alphabetical the French way: "Éclairage" sorts with the E's, not after the Z's.
    return sorted(services, key=lambda item: slugify(item.name))


def add_service(session: Session, commune_id: int, name: str) -> Service:
    name = validate_name(name)
    slug = slugify(name)
    if not slug:
        raise InvalidInput(_l("Le nom du service doit contenir des lettres."), field="name")
    exists = session.scalar(
        select(Service.id).where(Service.commune_id == commune_id, Service.slug == slug)
    )
    if exists is not None:
        raise InvalidInput(_l("Le service « {name} » existe déjà.").format(name=name), field="name")
    service = Service(commune_id=commune_id, slug=slug, name=name)
    session.add(service)
    _flush(session)
    return service


def rename_service(session: Session, commune_id: int, service_id: int, name: str) -> Service:
    service = _service_of(session, commune_id, service_id)
    service.name = validate_name(name)
    return service


def delete_service(session: Session, commune_id: int, service_id: int) -> None:
    """Delete a service that nothing uses any more (capabilities refuse to lose their
    routing: report categories, for one)."""
    session.delete(_service_of(session, commune_id, service_id))
    try:
        session.flush()
    except IntegrityError as error:
        raise InvalidInput(
            _l(
                "Ce service est encore utilisé (catégories de signalements, signalements) : "
                "rattachez-les à un autre service avant de le supprimer."
            )
        ) from error


def _service_of(session: Session, commune_id: int, service_id: int) -> Service:
    service = session.scalar(
        select(Service).where(Service.id == service_id, Service.commune_id == commune_id)
    )
    if service is None:
        raise NotFound(f"service {service_id}")
    return service


# ---------------------------------------------------------------- users and roles


def create_user(
    session: Session,
    *,
    email: str,
    name: str,
    password: str | None,
    kind: str = UserKind.AGENT,
    is_instance_admin: bool = False,
) -> User:
    email = validate_email(email)
    name = validate_name(name)
    if password is not None:
        try:
            check_password_strength(password, email)
        except WeakPassword as error:
            raise InvalidInput(error.args[0], field="password") from error
    if user_by_email(session, email) is not None:
        raise InvalidInput(
            _l("Un compte existe déjà pour {email}.").format(email=email), field="email"
        )
    user = User(
        email=email,
        name=name,
        password_hash=hash_password(password) if password else None,
        kind=kind,
        is_instance_admin=is_instance_admin,
    )
    session.add(user)
    _flush(session)
    return user


def set_password(session: Session, user_id: int, password: str) -> None:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id}")
    try:
        check_password_strength(password, user.email)
    except WeakPassword as error:
        raise InvalidInput(error.args[0], field="password") from error
    user.password_hash = hash_password(password)
    session.execute(delete(WebSession).where(WebSession.user_id == user_id))


def set_user_active(session: Session, user_id: int, active: bool) -> User:
    """Suspend or restore an account; suspending ends its open sessions."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id}")
    user.is_active = active
    if not active:
        session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    return user


def user_by_email(session: Session, email: str) -> User | None:
    return session.scalar(select(User).where(User.email == email.strip().lower()))


def get_user(session: Session, user_id: int) -> User | None:
    return session.scalar(
        select(User).options(selectinload(User.memberships)).where(User.id == user_id)
    )


def list_users(session: Session) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .options(selectinload(User.memberships).selectinload(Membership.commune))
            .order_by(User.email)
        )
    )


def grant_role(
    session: Session,
    *,
    user_id: int,
    commune_id: int,
    role: str,
    service_id: int | None = None,
) -> Membership:
    if role not in set(Role):
        raise InvalidInput(_l("Rôle inconnu : {role}.").format(role=role), field="role")
    get_commune(session, commune_id)
    if session.get(User, user_id) is None:
        raise NotFound(f"user {user_id}")
    if service_id is not None:
        _service_of(session, commune_id, service_id)
    existing = session.scalar(
        select(Membership).where(
            Membership.user_id == user_id,
            Membership.commune_id == commune_id,
            Membership.role == role,
            Membership.service_id.is_(None)
            if service_id is None
            else Membership.service_id == service_id,
        )
    )
    if existing is not None:
        return existing
    membership = Membership(
        user_id=user_id, commune_id=commune_id, role=role, service_id=service_id
    )
    session.add(membership)
    _flush(session)
    return membership


def revoke_role(session: Session, commune_id: int, membership_id: int) -> None:
    session.execute(
        delete(Membership).where(
            Membership.id == membership_id, Membership.commune_id == commune_id
        )
    )


def commune_members(session: Session, commune_id: int) -> list[Membership]:
    return list(
        session.scalars(
            select(Membership)
            .options(selectinload(Membership.user), selectinload(Membership.service))
            .where(Membership.commune_id == commune_id)
            .join(User)
            .order_by(User.name, Membership.role)
        )
    )


def create_agent(
    session: Session,
    *,
    commune_id: int,
    email: str,
    name: str,
    password: str | None,
    role: str = Role.AGENT,
    service_id: int | None = None,
) -> User:
    """A new agent account with a role in one commune, and the welcome e-mail promised
    in the same unit of work."""
    user = create_user(session, email=email, name=name, password=password)
    grant_role(session, user_id=user.id, commune_id=commune_id, role=role, service_id=service_id)
    commune = get_commune(session, commune_id)
    queue_email(
        session,
        to=user.email,
        subject=str(_l("Votre compte Communs pour {commune}").format(commune=commune.name)),
        body=str(
            _l(
                "Bonjour {name},\n\nUn compte d'agent a été ouvert pour vous sur Communs, "
                "pour la commune de {commune}. Connectez-vous avec l'adresse {email} et le mot "
                "de passe que votre administrateur vous a transmis.\n"
            ).format(name=user.name, commune=commune.name, email=user.email)
        ),
        commune_id=commune_id,
    )
    return user


# ---------------------------------------------------------------- sessions and login


@dataclass(frozen=True)
class LoginResult:
    user_id: int | None
    token: str | None = None
    locked_until: dt.datetime | None = None


def login(
    session: Session,
    *,
    email: str,
    password: str,
    client: str,
    max_failures: int,
    lock_seconds: int,
) -> LoginResult:
    """Check credentials, with rate limiting per account and per client address."""
    keys = [f"email:{email.strip().lower()}", f"client:{client}"]
    now = utcnow()
    locks = [
        row.locked_until
        for row in session.scalars(select(LoginThrottle).where(LoginThrottle.key.in_(keys)))
        if row.locked_until is not None and row.locked_until > now
    ]
    if locks:
        return LoginResult(user_id=None, locked_until=max(locks))
    user = user_by_email(session, email)
    if user is None or not user.is_active or not verify_password(user.password_hash, password):
        locked_until = _record_failure(session, keys, now, max_failures, lock_seconds)
        return LoginResult(user_id=None, locked_until=locked_until)
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[0]))
    token = new_token()
    session.add(
        WebSession(token_hash=token_hash(token), user_id=user.id, expires_at=now + SESSION_LIFETIME)
    )
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    return LoginResult(user_id=user.id, token=token)


def _record_failure(
    session: Session, keys: list[str], now: dt.datetime, max_failures: int, lock_seconds: int
) -> dt.datetime | None:
    locked_until = None
    for key in keys:
        row = session.get(LoginThrottle, key)
        if row is None:
            row = LoginThrottle(key=key, failures=0)
            session.add(row)
        elif now - row.last_failure_at > dt.timedelta(hours=1):
            row.failures = 0
        row.failures += 1
        row.last_failure_at = now
        threshold = max_failures if key.startswith("email:") else max_failures * 4
        if row.failures >= threshold:
            # Each further failure doubles the lock, up to an hour.
            lock = dt.timedelta(seconds=lock_seconds * 2 ** (row.failures - threshold))
            row.locked_until = now + min(lock, MAX_LOCK)
            locked_until = max(filter(None, [locked_until, row.locked_until]))
    return locked_until


def logout(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == token_hash(token)))


def user_for_session(session: Session, token: str) -> User | None:
    row = session.scalar(select(WebSession).where(WebSession.token_hash == token_hash(token)))
    if row is None or row.expires_at < utcnow():
        return None
    user = get_user(session, row.user_id)
    return user if user is not None and user.is_active else None


# ---------------------------------------------------------------- API keys


@dataclass(frozen=True)
class IssuedApiKey:
    id: int
    secret: str
    commune_id: int
    scopes: list[str]


def create_api_key(
    session: Session, *, commune_id: int, name: str, scopes: Iterable[str]
) -> IssuedApiKey:
    get_commune(session, commune_id)
    name = validate_name(name)
    scopes = sorted(set(scopes))
    unknown = [scope for scope in scopes if scope not in API_SCOPES]
    if unknown or not scopes:
        raise InvalidInput(
            _l("Capacités inconnues ou absentes : {scopes}. Capacités possibles : {known}.").format(
                scopes=", ".join(unknown) or "—", known=", ".join(API_SCOPES)
            ),
            field="scopes",
        )
    issued = generate_api_key()
    key = ApiKey(
        commune_id=commune_id,
        name=name,
        prefix=issued.prefix,
        key_hash=issued.key_hash,
        scopes=scopes,
    )
    session.add(key)
    _flush(session)
    return IssuedApiKey(id=key.id, secret=issued.secret, commune_id=commune_id, scopes=scopes)


def api_key_for_secret(session: Session, secret: str) -> ApiKey | None:
    prefix = api_key_prefix(secret)
    if prefix is None:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or key.revoked_at is not None or not api_key_matches(secret, key.key_hash):
        return None
    return key


def list_api_keys(session: Session, commune_id: int | None = None) -> list[ApiKey]:
    query = select(ApiKey).options(selectinload(ApiKey.commune)).order_by(ApiKey.created_at)
    if commune_id is not None:
        query = query.where(ApiKey.commune_id == commune_id)
    return list(session.scalars(query))


def revoke_api_key(session: Session, key_id: int, commune_id: int | None = None) -> None:
    query = select(ApiKey).where(ApiKey.id == key_id)
    if commune_id is not None:
        query = query.where(ApiKey.commune_id == commune_id)
    key = session.scalar(query)
    if key is None:
        raise NotFound(f"api key {key_id}")
    key.revoked_at = utcnow()


def count_rows(session: Session, model: type, **filters: Any) -> int:
    query = select(func.count()).select_from(model)
    for column, value in filters.items():
        query = query.where(getattr(model, column) == value)
    return int(session.scalar(query) or 0)


def _flush(session: Session) -> None:
    """Flush, turning a race on a unique column into a clear message."""
    try:
        session.flush()
    except IntegrityError as error:
        raise InvalidInput(_l("Cet enregistrement existe déjà (doublon refusé).")) from error
