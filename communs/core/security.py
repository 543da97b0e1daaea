"""Passwords, API keys, tokens and CSRF: the cryptographic helpers of the core."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from communs.core.i18n import lazy_gettext as _l

_hasher = PasswordHasher()
# A hash to verify against when the account does not exist, so timing does not tell.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MIN_PASSWORD_LENGTH = 12
COMMON_PASSWORDS = {
    "motdepasse123",
    "motdepasse1234",
    "azertyuiop123",
    "password1234",
    "123456789012",
    "administrateur",
    "bonjour123456",
    "soleil123456",
}

API_KEY_PREFIX = "cmn"


class WeakPassword(ValueError):
    """Raised with a French, translatable explanation of what is missing."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def check_password_strength(password: str, email: str = "") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(_l("Le mot de passe doit contenir au moins 12 caractères."))
    classes = sum(
        bool(re.search(pattern, password))
        for pattern in (r"[a-zà-ÿ]", r"[A-ZÀ-Ý]", r"\d", r"[^\w\s]|_")
    )
    if classes < 3 and len(password) < 20:
        raise WeakPassword(
            _l(
                "Le mot de passe doit mêler au moins trois types de caractères parmi "
                "minuscules, majuscules, chiffres et symboles (ou compter 20 caractères)."
            )
        )
    name_parts = re.split(r"[._+-]", email.split("@", 1)[0].lower())
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS or any(len(p) >= 4 and p in lowered for p in name_parts):
        raise WeakPassword(_l("Ce mot de passe est trop facile à deviner."))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class NewApiKey:
    secret: str
    prefix: str
    key_hash: str


def generate_api_key() -> NewApiKey:
    prefix = secrets.token_hex(6)
    secret = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(secret=secret, prefix=prefix, key_hash=token_hash(secret))


def api_key_prefix(secret: str) -> str | None:
    parts = secret.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not parts[1]:
        return None
    return parts[1]


def api_key_matches(secret: str, key_hash: str) -> bool:
    return hmac.compare_digest(token_hash(secret), key_hash)


def csrf_token(secret_key: str, csrf_seed: str) -> str:
    return hmac.new(secret_key.encode(), csrf_seed.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret_key: str, csrf_seed: str | None, submitted: str | None) -> bool:
    if not csrf_seed or not submitted:
        return False
    return hmac.compare_digest(csrf_token(secret_key, csrf_seed), submitted)
