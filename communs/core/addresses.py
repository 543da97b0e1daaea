"""Addresses of a commune: Base Adresse Locale import, search and reverse lookup.

The import reads the national BAL CSV format (``;``-separated, UTF-8, one row per
address point; versions 1.1 to 1.4). A file that cannot be read as a BAL is refused
whole; within a readable file, bad rows are reported with their line number and the
good rows replace the commune's addresses in one transaction.
"""

from __future__ import annotations

import csv
import io
import math
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, text
from sqlalchemy.orm import Session

from communs.core.i18n import lazy_gettext as _l
from communs.core.models import Address, Commune
from communs.core.service import InvalidInput

REQUIRED_COLUMNS = ("cle_interop", "voie_nom", "numero")
POSITION_COLUMNS = (("long", "lat"), ("lon", "lat"))
TOPONYM_NUMBER = 99999
MAX_ROWS = 500_000
INSERT_BATCH = 2_000
# How far (degrees) outside its commune's bounding box an address may lie.
BOUNDARY_MARGIN = 0.05
SEARCH_LIMIT_MAX = 50

Progress = Callable[[int], None]


@dataclass
class RowError:
    line: int
    message: str


@dataclass
class ParsedBal:
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


@dataclass
class ImportReport:
    imported: int
    errors: list[RowError]


def normalise(value: str) -> str:
    """Lower case, no accents, words separated by one space: the searchable form."""
    decomposed = unicodedata.normalize("NFKD", value)
    ascii_text = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(re.findall(r"[a-z0-9]+", ascii_text.lower()))


def parse_bal(content: bytes, commune: Commune, progress: Progress | None = None) -> ParsedBal:
    """Read a BAL file; raise ``InvalidInput`` if it is not one."""
    text_content = _decode(content)
    lines = text_content.splitlines()
    if not lines or not lines[0].strip():
        raise InvalidInput(_l("Le fichier BAL est vide."))
    if len(lines) - 1 > MAX_ROWS:
        raise InvalidInput(_l("Le fichier BAL dépasse {max} lignes.").format(max=MAX_ROWS))
    delimiter = ";" if lines[0].count(";") >= lines[0].count(",") else ","
    reader = csv.DictReader(io.StringIO(text_content), delimiter=delimiter)
    columns = {(name or "").strip().lower() for name in reader.fieldnames or []}
    _check_columns(columns)
    parsed = ParsedBal()
    for index, raw in enumerate(reader):
        line = reader.line_num
        row = {(key or "").strip().lower(): (value or "").strip() for key, value in raw.items()}
        if None in raw:
            parsed.errors.append(RowError(line, str(_l("trop de colonnes sur cette ligne"))))
        else:
            try:
                parsed.rows.append(_address_row(row, commune))
            except InvalidInput as error:
                parsed.errors.append(RowError(line, str(error)))
        if progress is not None and index % 500 == 0:
            progress(index + 1)
    if not parsed.rows and not parsed.errors:
        raise InvalidInput(_l("Le fichier BAL ne contient aucune adresse."))
    return parsed


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidInput(
            _l(
                "Le fichier n'est pas encodé en UTF-8 (octet invalide en position {position}) : "
                "le format BAL impose l'UTF-8."
            ).format(position=error.start)
        ) from error


def _check_columns(columns: set[str]) -> None:
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if not any(lon in columns and lat in columns for lon, lat in POSITION_COLUMNS):
        missing.append("long/lat")
    if missing:
        raise InvalidInput(
            _l(
                "Ce fichier n'est pas au format Base Adresse Locale : colonnes manquantes "
                "{columns}. Le séparateur attendu est « ; »."
            ).format(columns=", ".join(missing))
        )


def _address_row(row: dict[str, str], commune: Commune) -> dict[str, Any]:
    voie_nom = row.get("voie_nom", "")
    if not voie_nom:
        raise InvalidInput(_l("voie_nom est vide"))
    try:
        numero = int(row.get("numero", ""))
    except ValueError as error:
        raise InvalidInput(
            _l("numero « {value} » n'est pas un nombre entier").format(value=row.get("numero"))
        ) from error
    if not 0 <= numero <= TOPONYM_NUMBER:
        raise InvalidInput(_l("numero {value} hors de 0 à 99999").format(value=numero))
    lon, lat = _position(row)
    if commune.min_lon is not None and not (
        commune.min_lon - BOUNDARY_MARGIN <= lon <= commune.max_lon + BOUNDARY_MARGIN
        and commune.min_lat - BOUNDARY_MARGIN <= lat <= commune.max_lat + BOUNDARY_MARGIN
    ):
        raise InvalidInput(
            _l("la position {lat}, {lon} est hors de la commune").format(lat=lat, lon=lon)
        )
    insee = row.get("commune_insee", "").upper()
    delegated = row.get("commune_deleguee_insee", "").upper()
    if insee and commune.insee_code not in (insee, delegated):
        raise InvalidInput(
            _l("commune_insee {code} ne correspond pas à la commune ({expected})").format(
                code=insee, expected=commune.insee_code
            )
        )
    cle_interop = row.get("cle_interop", "")
    if not cle_interop:
        raise InvalidInput(_l("cle_interop est vide"))
    suffixe = row.get("suffixe") or None
    lieudit = row.get("lieudit_complement_nom") or None
    commune_nom = row.get("commune_deleguee_nom") or row.get("commune_nom") or commune.name
    street = " ".join(part for part in (voie_nom, lieudit and f"({lieudit})") if part)
    number = "" if numero == TOPONYM_NUMBER else f"{numero}{' ' + suffixe if suffixe else ''} "
    label = f"{number}{street}, {commune_nom}"
    return {
        "commune_id": commune.id,
        "cle_interop": cle_interop[:64],
        "uid_adresse": (row.get("uid_adresse") or None),
        "numero": numero,
        "suffixe": suffixe,
        "voie_nom": voie_nom,
        "lieudit": lieudit,
        "commune_nom": commune_nom,
        "lon": lon,
        "lat": lat,
        "label": label,
        "search_text": normalise(label),
    }


def _position(row: dict[str, str]) -> tuple[float, float]:
    raw_lon = row.get("long") or row.get("lon") or ""
    raw_lat = row.get("lat") or ""
    try:
        lon = float(raw_lon.replace(",", "."))
        lat = float(raw_lat.replace(",", "."))
    except ValueError as error:
        raise InvalidInput(
            _l("position long/lat illisible (« {lon} », « {lat} »)").format(
                lon=raw_lon, lat=raw_lat
            )
        ) from error
    if not (-180 <= lon <= 180 and -90 <= lat <= 90) or math.isnan(lon) or math.isnan(lat):
        raise InvalidInput(_l("position long/lat hors limites"))
    return lon, lat


def replace_addresses(
    session: Session,
    commune_id: int,
    rows: list[dict[str, Any]],
    progress: Progress | None = None,
) -> int:
    """Replace a commune's addresses with ``rows``: a unit of work for ``Database.write``."""
    if any(row["commune_id"] != commune_id for row in rows):
        raise ValueError("rows of another commune")
    session.execute(delete(Address).where(Address.commune_id == commune_id))
    for start in range(0, len(rows), INSERT_BATCH):
        session.execute(insert(Address), rows[start : start + INSERT_BATCH])
        if progress is not None:
            progress(min(start + INSERT_BATCH, len(rows)))
    return len(rows)


# ---------------------------------------------------------------- search


def search(session: Session, commune_id: int, query: str, limit: int = 10) -> list[Address]:
    """Accent-insensitive prefix search within one commune."""
    tokens = normalise(query).split()[:8]
    if not tokens:
        return []
    limit = max(1, min(limit, SEARCH_LIMIT_MAX))
    if session.bind.dialect.name == "sqlite":
        match = " AND ".join(f'"{token}"*' for token in tokens)
        ids = session.execute(
            text(
                "SELECT a.id FROM address_search s JOIN addresses a ON a.id = s.rowid "
                "WHERE address_search MATCH :match AND a.commune_id = :commune "
                "ORDER BY s.rank, a.voie_nom, a.numero LIMIT :limit"
            ),
            {"match": match, "commune": commune_id, "limit": limit},
        ).scalars()
    else:
        tsquery = " & ".join(f"{token}:*" for token in tokens)
        ids = session.execute(
            text(
                "SELECT id FROM addresses WHERE commune_id = :commune "
                "AND to_tsvector('simple', search_text) @@ to_tsquery('simple', :query) "
                "ORDER BY ts_rank(to_tsvector('simple', search_text), "
                "to_tsquery('simple', :query)) DESC, voie_nom, numero LIMIT :limit"
            ),
            {"query": tsquery, "commune": commune_id, "limit": limit},
        ).scalars()
    order = list(ids)
    if not order:
        return []
    found = {
        row.id: row
        for row in session.scalars(
            select(Address).where(Address.id.in_(order), Address.commune_id == commune_id)
        )
    }
    return [found[i] for i in order if i in found]


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres."""
    radius = 6_371_008.8
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * radius * math.asin(math.sqrt(a))


def nearest(
    session: Session, commune_id: int, lon: float, lat: float
) -> tuple[Address, float] | None:
    """The commune's address nearest to a point, within about 10 km."""
    for window in (0.002, 0.01, 0.03, 0.1):
        lon_window = window / max(math.cos(math.radians(lat)), 0.01)
        candidates = list(
            session.scalars(
                select(Address).where(
                    Address.commune_id == commune_id,
                    Address.lat.between(lat - window, lat + window),
                    Address.lon.between(lon - lon_window, lon + lon_window),
                )
            )
        )
        if candidates:
            best = min(candidates, key=lambda a: distance_m(lon, lat, a.lon, a.lat))
            return best, distance_m(lon, lat, best.lon, best.lat)
    return None


def as_feature(address: Address, **extra: Any) -> dict[str, Any]:
    """A GeoJSON Feature shaped like the national address API's answers."""
    return {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [address.lon, address.lat]},
        "properties": {
            "id": address.cle_interop,
            "label": address.label,
            "housenumber": None
            if address.numero == TOPONYM_NUMBER
            else f"{address.numero}{address.suffixe or ''}",
            "street": address.voie_nom,
            "locality": address.lieudit,
            "city": address.commune_nom,
            **extra,
        },
    }


def iter_errors_text(errors: list[RowError]) -> Iterator[str]:
    for error in errors:
        yield str(_l("ligne {line} : {message}").format(line=error.line, message=error.message))
