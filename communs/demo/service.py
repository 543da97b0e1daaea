"""The demo territory: a fictional commune at real coordinates on the Loire, east of
Tours, with its services, a Base Adresse Locale, an admin account and an API key.

``ensure_demo`` is idempotent: a second start reuses what the first one created and
the credentials it wrote to ``<data-dir>/demo-credentials.json``.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from communs.core import addresses, service
from communs.core.db import Database
from communs.core.models import Role
from communs.core.settings import Settings
from communs.demo.hub import load_demo_entities
from communs.reports import service as reports

DEMO_SLUG = "belvedere-sur-loire"
DEMO_NAME = "Belvédère-sur-Loire"
# Department 37 (Indre-et-Loire) has no commune numbered 999: the code is valid and fictional.
DEMO_INSEE = "37999"
DEMO_ADMIN_EMAIL = "admin@belvedere-sur-loire.example"
DEMO_BAL = Path(__file__).parent / "data" / "bal-belvedere-sur-loire.csv"
DEMO_BOUNDARY = {
    "type": "Polygon",
    "coordinates": [
        [
            [0.8400, 47.3960],
            [0.8560, 47.3940],
            [0.8720, 47.3965],
            [0.8740, 47.4060],
            [0.8650, 47.4120],
            [0.8480, 47.4110],
            [0.8390, 47.4040],
            [0.8400, 47.3960],
        ]
    ],
}
CREDENTIALS_FILE = "demo-credentials.json"


def demo_password() -> str:
    return f"Demo-{secrets.token_urlsafe(12)}-2026"


def ensure_demo(db: Database, settings: Settings) -> dict[str, Any]:
    path = settings.data_dir / CREDENTIALS_FILE
    saved = json.loads(path.read_text()) if path.exists() else None
    with db.read() as session:
        commune = service.commune_by_slug(session, DEMO_SLUG)
        admin = service.user_by_email(session, DEMO_ADMIN_EMAIL)
        key = service.api_key_for_secret(session, saved["api_key"]) if saved else None
    if commune is None:
        commune = db.write(
            service.create_commune,
            slug=DEMO_SLUG,
            name=DEMO_NAME,
            insee_code=DEMO_INSEE,
            boundary=DEMO_BOUNDARY,
        )
        parsed = addresses.parse_bal(DEMO_BAL.read_bytes(), commune)
        db.write(addresses.replace_addresses, commune.id, parsed.rows)
    load_demo_entities(db, commune.id, DEMO_BOUNDARY)
    db.write(reports.install_default_categories, commune.id)
    if saved and admin is not None and key is not None:
        return saved
    password = demo_password()
    if admin is None:
        admin = db.write(
            service.create_user,
            email=DEMO_ADMIN_EMAIL,
            name="Administratrice de la démo",
            password=password,
            is_instance_admin=True,
        )
    else:
        db.write(service.set_password, admin.id, password)
    db.write(service.grant_role, user_id=admin.id, commune_id=commune.id, role=Role.COMMUNE_ADMIN)
    issued = db.write(
        service.create_api_key,
        commune_id=commune.id,
        name="Clé de démonstration",
        scopes=service.API_SCOPES,
    )
    credentials = {
        "commune": DEMO_SLUG,
        "admin_email": DEMO_ADMIN_EMAIL,
        "admin_password": password,
        "api_key": issued.secret,
    }
    path.write_text(json.dumps(credentials, ensure_ascii=False, indent=2))
    path.chmod(0o600)
    return credentials
