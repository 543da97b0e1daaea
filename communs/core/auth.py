"""Who is calling, and what they may reach.

Every route declares exactly one access policy as a FastAPI dependency built here
(``public``, ``login_required``, ``instance_admin``, ``commune_access``). The tenancy
test walks the application's routes and fails on a route without one, so a new route
cannot forget its commune check.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from communs.core import service
from communs.core.cache import TtlCache
from communs.core.db import utcnow
from communs.core.models import ApiKey, Commune, Role, User
from communs.core.security import token_hash

SESSION_COOKIE = "communs_session"
ACCESS_ATTRIBUTE = "__communs_access__"
# Machines call often: a key is checked against the database at most every 10 seconds,
# so a revocation takes effect within that delay in every process.
_api_keys: TtlCache[ApiKey | None] = TtlCache(ttl=10)
# "Last used" is kept to the minute: a write per request would slow every machine call.
KEY_USE_RESOLUTION = dt.timedelta(minutes=1)


class LoginRequired(Exception):
    """Anonymous caller on a protected route: pages redirect, APIs answer 401."""


class AccessDenied(Exception):
    """Authenticated, but not allowed here: 403."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CommuneNotFound(Exception):
    """No commune at this slug: 404."""


@dataclass
class Principal:
    user: User | None = None
    api_key: ApiKey | None = None
    roles: dict[int, set[str]] = field(default_factory=dict)

    @property
    def is_anonymous(self) -> bool:
        return self.user is None and self.api_key is None

    @property
    def is_instance_admin(self) -> bool:
        return self.user is not None and self.user.is_instance_admin

    def commune_ids(self) -> set[int]:
        if self.api_key is not None:
            return {self.api_key.commune_id}
        return set(self.roles)

    def has_role(self, commune_id: int, roles: Iterable[str]) -> bool:
        if self.is_instance_admin:
            return True
        return bool(self.roles.get(commune_id, set()) & set(roles))

    def has_scope(self, commune_id: int, scope: str) -> bool:
        key = self.api_key
        return key is not None and key.commune_id == commune_id and scope in key.scopes


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def load_principal(request: Request) -> Principal:
    """Resolve the caller once per request (cached on ``request.state``)."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    db = request.app.state.db
    principal = Principal()
    bearer = _bearer(request)
    if bearer is not None:
        key = api_key(request, bearer)
        if key is None:
            raise LoginRequired("invalid API key")
        principal.api_key = key
        now = utcnow()
        if key.last_used_at is None or now - key.last_used_at > KEY_USE_RESOLUTION:
            key.last_used_at = now  # the remembered key: touched once a minute, not per call
            db.write_later(_touch_api_key, key.id, now)
    else:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            with db.read() as session:
                user = service.user_for_session(session, token)
            if user is not None:
                principal.user = user
                for membership in user.memberships:
                    principal.roles.setdefault(membership.commune_id, set()).add(membership.role)
    request.state.principal = principal
    return principal


def api_key(request: Request, secret: str) -> ApiKey | None:
    """The live API key of ``secret``, remembered for a while: a bearer token, or a key
    that a protocol passes as a parameter (Open311's ``api_key``)."""
    db = request.app.state.db
    return _api_keys.get_or_load(token_hash(secret), lambda: _read_api_key(db, secret))


def _read_api_key(db: Any, secret: str) -> ApiKey | None:
    with db.read() as session:
        return service.api_key_for_secret(session, secret)


def forget_api_keys() -> None:
    """Drop remembered keys at once (after a revocation in this process)."""
    _api_keys.clear()


def _touch_api_key(session: Any, key_id: int, now: dt.datetime) -> None:
    key = session.get(ApiKey, key_id)
    if key is not None:
        key.last_used_at = now


def mark_access(policy: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the access policy a dependency enforces (the tenancy test reads it)."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(function, ACCESS_ATTRIBUTE, policy)
        return function

    return decorate


@mark_access("public")
def public(request: Request) -> Principal:
    """Anyone may call this route; credentials, if any, are still resolved."""
    try:
        return load_principal(request)
    except LoginRequired:
        return Principal()


@mark_access("login")
def login_required(request: Request) -> Principal:
    principal = load_principal(request)
    if principal.user is None:
        raise LoginRequired()
    return principal


@mark_access("instance_admin")
def instance_admin(request: Request) -> Principal:
    principal = login_required(request)
    if not principal.is_instance_admin:
        raise AccessDenied("instance admin only")
    return principal


@dataclass(frozen=True)
class CommuneContext:
    commune: Commune
    principal: Principal

    @property
    def commune_id(self) -> int:
        return self.commune.id


def resolve_commune(request: Request, slug: str) -> Commune:
    with request.app.state.db.read() as session:
        commune = service.commune_by_slug(session, slug)
    if commune is None:
        raise CommuneNotFound(slug)
    request.state.commune = commune
    return commune


def commune_public() -> Callable[..., CommuneContext]:
    """A public page or API of one commune (the path's ``{commune}``)."""

    @mark_access("commune_public")
    def dependency(request: Request, commune: str) -> CommuneContext:
        return CommuneContext(resolve_commune(request, commune), public(request))

    return dependency


def commune_access(
    *, roles: Iterable[str] = (), scope: str | None = None
) -> Callable[..., CommuneContext]:
    """The caller must hold one of ``roles`` in the path's commune (people), or an API
    key of that commune granted ``scope`` (machines). The instance admin passes."""
    allowed_roles = frozenset(roles)

    @mark_access("commune")
    def dependency(request: Request, commune: str) -> CommuneContext:
        principal = load_principal(request)
        if principal.is_anonymous:
            raise LoginRequired()
        found = resolve_commune(request, commune)
        if principal.api_key is not None:
            if scope is None or not principal.has_scope(found.id, scope):
                raise AccessDenied("API key not valid for this commune or capability")
        elif not allowed_roles or not principal.has_role(found.id, allowed_roles):
            raise AccessDenied("no role in this commune")
        return CommuneContext(found, principal)

    dependency.roles = allowed_roles  # type: ignore[attr-defined]
    dependency.scope = scope  # type: ignore[attr-defined]
    return dependency


ALL_STAFF = (Role.COMMUNE_ADMIN, Role.AGENT, Role.OPERATOR, Role.VIEWER)
COMMUNE_ADMIN = (Role.COMMUNE_ADMIN,)


def access_policy(function: Callable[..., Any]) -> str | None:
    return getattr(function, ACCESS_ATTRIBUTE, None)
