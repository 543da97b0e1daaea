import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HEADER, bal_row, imported, make_commune
from sqlalchemy import select

from communs.core import addresses
from communs.core.models import Address
from communs.core.service import InvalidInput

GOOD = (
    "\n".join(
        [
            HEADER,
            bal_row("37001_0010_00001", "Rue de l'Église", 1, 0.851, 47.351),
            bal_row("37001_0010_00003", "Rue de l'Église", 3, 0.852, 47.352, suffix="bis"),
            bal_row("37001_0020_00002", "Avenue Émile Zola", 2, 0.860, 47.360),
            bal_row("37001_0030_00005", "Place du Marché", 5, 0.870, 47.370),
        ]
    )
    + "\n"
)


def test_import_search_and_reverse(client, db):
    commune = make_commune(db)
    parsed = imported(db, commune, GOOD)
    assert not parsed.errors and len(parsed.rows) == 4
    body = client.get("/alpha/api/addresses", params={"q": "eglise"}).json()
    assert [f["properties"]["label"] for f in body["features"]] == [
        "1 Rue de l'Église, Alpha",
        "3 bis Rue de l'Église, Alpha",
    ]
    # Accent-insensitive prefix search, several words.
    body = client.get("/alpha/api/addresses", params={"q": "EMI zol"}).json()
    assert body["features"][0]["properties"]["street"] == "Avenue Émile Zola"
    assert body["features"][0]["geometry"] == {"type": "Point", "coordinates": [0.86, 47.36]}
    reverse = client.get(
        "/alpha/api/addresses/reverse", params={"lon": 0.8701, "lat": 47.3701}
    ).json()
    nearest = reverse["features"][0]["properties"]
    assert nearest["label"] == "5 Place du Marché, Alpha" and nearest["distance"] < 20


def test_search_never_crosses_communes(client, db):
    alpha = make_commune(db, "alpha", "37001")
    beta = make_commune(db, "beta", "37002")
    imported(db, alpha, GOOD)
    imported(db, beta, GOOD.replace("37001", "37002").replace("Alpha", "Beta"))
    labels = [
        f["properties"]["label"]
        for f in client.get("/beta/api/addresses", params={"q": "rue"}).json()["features"]
    ]
    assert labels and all(label.endswith("Alpha") is False for label in labels)
    with db.read() as session:
        assert all(a.commune_id == beta.id for a in addresses.search(session, beta.id, "rue"))
    assert client.get("/gamma/api/addresses", params={"q": "rue"}).status_code == 404


def test_bad_rows_reported_with_line_numbers_good_rows_kept(db):
    commune = make_commune(db)
    content = (
        "\n".join(
            [
                HEADER,
                bal_row("37001_0010_00001", "Rue Haute", 1, 0.851, 47.351),
                bal_row("37001_0010_00002", "Rue Haute", "deux", 0.851, 47.351),
                bal_row("37001_0010_00003", "", 3, 0.851, 47.351),
                bal_row("37001_0010_00004", "Rue Haute", 4, "abc", 47.351),
                bal_row("37001_0010_00005", "Rue Haute", 5, 2.35, 48.85),
                bal_row("37002_0010_00006", "Rue Haute", 6, 0.851, 47.351, insee="37002"),
                bal_row("37001_0010_00007", "Rue Haute", 7, 0.852, 47.352),
            ]
        )
        + "\n"
    )
    parsed = imported(db, commune, content)
    assert [error.line for error in parsed.errors] == [3, 4, 5, 6, 7]
    messages = [error.message for error in parsed.errors]
    assert "n'est pas un nombre entier" in messages[0]
    assert "voie_nom est vide" in messages[1]
    assert "hors de la commune" in messages[3]
    assert "ne correspond pas à la commune" in messages[4]
    with db.read() as session:
        numbers = sorted(session.scalars(select(Address.numero)))
    assert numbers == [1, 7]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "vide"),
        ("nom,prénom\nDupont,Jean\n".encode(), "colonnes manquantes"),
        (HEADER.encode() + b"\n", "aucune adresse"),
        ("cle_interop;voie_nom;numero;long;lat\n1;Rue é;1;0.85;47.35\n".encode("latin-1"), "UTF-8"),
    ],
)
def test_malformed_bal_refused_whole_and_nothing_replaced(db, content, fragment):
    commune = make_commune(db)
    imported(db, commune, GOOD)
    with pytest.raises(InvalidInput, match=fragment):
        addresses.parse_bal(content, commune)
    with db.read() as session:
        assert len(session.scalars(select(Address.id)).all()) == 4


def test_cli_import_reports_lines_and_progress(tmp_path: Path, database_url):
    file = tmp_path / "bal.csv"
    file.write_text(GOOD + bal_row("37001_0040_00001", "Rue Basse", "x", 0.85, 47.35) + "\n")
    env = {
        "COMMUNS_DATABASE_URL": database_url,
        "COMMUNS_DATA_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
        "COLUMNS": "250",
    }
    run = [sys.executable, "-m", "communs"]
    created = subprocess.run(
        [*run, "commune", "create", "--name", "Alpha", "--insee", "37001"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    result = subprocess.run(
        [*run, "commune", "import-addresses", str(file), "--commune", "alpha"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "4 adresses importées, 1 lignes rejetées" in result.stdout
    assert "ligne 6" in result.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("a;b\n1;2\n")
    refused = subprocess.run(
        [*run, "commune", "import-addresses", str(bad), "--commune", "alpha"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "colonnes manquantes" in refused.stderr
    invalid = subprocess.run(
        [*run, "commune", "create", "--name", "Beta", "--insee", "99999"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert invalid.returncode == 2 and "Le code INSEE" in invalid.stderr
