"""Instance settings, read from ``COMMUNS_*`` environment variables.

Every variable is documented in README.md with its default.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

SECRET_KEY_FILE = "secret_key"


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"COMMUNS_{name}")
    return value if value not in (None, "") else default


def _env_bool(name: str, default: bool) -> bool:
    value = _env(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_int(name: str, default: int) -> int:
    value = _env(name)
    return int(value) if value is not None else default


def _env_float(name: str, default: float) -> float:
    value = _env(name)
    return float(value) if value is not None else default


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("communs-data")
    database_url: str = ""
    secret_key: str = ""
    base_url: str = "http://127.0.0.1:8000"
    mqtt_url: str | None = None
    mqtt_client_id: str | None = None
    mqtt_share_group: str | None = None
    mqtt_topic_prefix: str = "communs"
    mqtt_session_expiry: int = 86_400
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    mail_from: str = "communs@localhost"
    languages: tuple[str, ...] = ("fr", "en")
    default_language: str = "fr"
    log_json: bool = False
    login_max_failures: int = 5
    login_lock_seconds: int = 60
    job_poll_seconds: float = 0.5
    job_max_attempts: int = 8
    job_backoff_seconds: float = 2.0
    job_lease_seconds: int = 60
    upload_max_bytes: int = 10 * 1024 * 1024
    hub_open_writes: bool = False
    hub_default_tenant: str | None = None
    hub_fetch_private_contexts: bool = False
    hub_fetch_contexts: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secure_cookies(self) -> bool:
        return self.base_url.startswith("https://")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)


def load_settings(data_dir: str | Path | None = None) -> Settings:
    """Build settings from the environment; ``data_dir`` overrides COMMUNS_DATA_DIR."""
    directory = Path(data_dir or _env("DATA_DIR", "communs-data")).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    database_url = _env("DATABASE_URL") or f"sqlite:///{directory / 'communs.sqlite3'}"
    languages = tuple(
        code.strip() for code in (_env("LANGUAGES", "fr,en") or "fr,en").split(",") if code.strip()
    )
    return Settings(
        data_dir=directory,
        database_url=normalise_database_url(database_url),
        secret_key=_env("SECRET_KEY") or _read_or_create_secret(directory),
        base_url=(_env("BASE_URL", "http://127.0.0.1:8000") or "").rstrip("/"),
        mqtt_url=_env("MQTT_URL"),
        mqtt_client_id=_env("MQTT_CLIENT_ID"),
        mqtt_share_group=_env("MQTT_SHARE_GROUP"),
        mqtt_topic_prefix=(_env("MQTT_TOPIC_PREFIX", "communs") or "communs").strip("/"),
        mqtt_session_expiry=_env_int("MQTT_SESSION_EXPIRY", 86_400),
        smtp_host=_env("SMTP_HOST"),
        smtp_port=_env_int("SMTP_PORT", 25),
        smtp_user=_env("SMTP_USER"),
        smtp_password=_env("SMTP_PASSWORD"),
        smtp_starttls=_env_bool("SMTP_STARTTLS", False),
        mail_from=_env("MAIL_FROM", "communs@localhost") or "communs@localhost",
        languages=languages,
        default_language=languages[0],
        log_json=_env_bool("LOG_JSON", False),
        login_max_failures=_env_int("LOGIN_MAX_FAILURES", 5),
        login_lock_seconds=_env_int("LOGIN_LOCK_SECONDS", 60),
        job_poll_seconds=_env_float("JOB_POLL_SECONDS", 0.5),
        job_max_attempts=_env_int("JOB_MAX_ATTEMPTS", 8),
        job_backoff_seconds=_env_float("JOB_BACKOFF_SECONDS", 2.0),
        job_lease_seconds=_env_int("JOB_LEASE_SECONDS", 60),
        upload_max_bytes=_env_int("UPLOAD_MAX_BYTES", 10 * 1024 * 1024),
        hub_open_writes=_env_bool("HUB_OPEN_WRITES", False),
        hub_default_tenant=_env("HUB_DEFAULT_TENANT"),
        hub_fetch_private_contexts=_env_bool("HUB_FETCH_PRIVATE_CONTEXTS", False),
        hub_fetch_contexts=_env_bool("HUB_FETCH_CONTEXTS", True),
    )


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever scheme the operator wrote."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _read_or_create_secret(directory: Path) -> str:
    path = directory / SECRET_KEY_FILE
    if path.exists():
        return path.read_text().strip()
    key = secrets.token_urlsafe(48)
    path.write_text(key)
    path.chmod(0o600)
    return key
