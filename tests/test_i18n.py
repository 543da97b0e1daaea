"""The English catalogue covers every French message of the code and templates.

Messages are extracted exactly as ``pybabel extract -F babel.cfg`` does, so a new French
string without an English translation fails here (see babel.cfg for how to update the
catalogue).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from jinja2 import Environment

from communs.core import i18n

ROOT = Path(__file__).resolve().parents[1]
BABEL_CFG = ROOT / "babel.cfg"
EN_PO = ROOT / "communs" / "core" / "translations" / "en" / "LC_MESSAGES" / "messages.po"

# {name}, {0}, {value!r}, {x:>3}; %(num)d, %(name)s, %d, %s (but not a literal %%).
PLACEHOLDER = re.compile(
    r"\{[^{}]*\}|%(?:\([^)]*\))?[-#0 +]*(?:\d+|\*)?(?:\.\d+)?[diouxXeEfFgGcrsa]"
)

Msgid = str | tuple[str, str]


@cache
def extracted() -> dict[Msgid, list[str]]:
    """msgid (or (singular, plural)) → where it is used, per babel.cfg."""
    with BABEL_CFG.open() as handle:
        method_map, options_map = parse_mapping_cfg(handle, str(BABEL_CFG))
    found: dict[Msgid, list[str]] = {}
    for filename, lineno, message, _comments, _context in extract_from_dir(
        ROOT, method_map, options_map, keywords=DEFAULT_KEYWORDS
    ):
        key: Msgid = message if isinstance(message, str) else (message[0], message[1])
        found.setdefault(key, []).append(f"{filename}:{lineno}")
    return found


@cache
def english() -> Catalog:
    with EN_PO.open("rb") as handle:
        return read_po(handle, locale="en")


def placeholders(text: str) -> Counter[str]:
    return Counter(PLACEHOLDER.findall(text.replace("%%", "")))


def is_translated(entry: Message) -> bool:
    strings = entry.string if isinstance(entry.string, (list, tuple)) else [entry.string]
    return not entry.fuzzy and bool(strings) and all(s and s.strip() for s in strings)


def test_extraction_finds_python_and_template_messages() -> None:
    messages = extracted()
    locations = [location for places in messages.values() for location in places]
    assert any(".py:" in location for location in locations)
    assert any(".html:" in location for location in locations)
    assert "Se connecter" in messages
    assert any(isinstance(key, tuple) for key in messages), "no ngettext message extracted"


def test_catalogue_header() -> None:
    catalog = english()
    assert str(catalog.locale) == "en"
    assert catalog.num_plurals == 2
    assert catalog.plural_expr.replace(" ", "") in ("(n!=1)", "n!=1")
    assert catalog.charset.lower() == "utf-8"
    assert not catalog.fuzzy


def test_every_message_has_an_english_translation() -> None:
    catalog = english()
    problems: list[str] = []
    for key, places in sorted(extracted().items(), key=lambda item: str(item[0])):
        singular = key if isinstance(key, str) else key[0]
        where = ", ".join(places[:3])
        entry = catalog.get(singular)
        if entry is None:
            problems.append(f"missing: {key!r} ({where})")
        elif isinstance(key, tuple) and (
            not entry.pluralizable or tuple(entry.id)[:2] != key  # type: ignore[arg-type]
        ):
            problems.append(f"should be a plural entry {key!r} ({where})")
        elif isinstance(key, str) and entry.pluralizable:
            problems.append(f"should be a singular entry {key!r} ({where})")
        elif not is_translated(entry):
            problems.append(f"untranslated or fuzzy: {key!r} ({where})")
    assert not problems, (
        f"{len(problems)} message(s) lack an English translation in {EN_PO.relative_to(ROOT)} "
        "(see babel.cfg for how to update it):\n" + "\n".join(problems)
    )


def test_translations_keep_the_placeholders() -> None:
    problems: list[str] = []
    for entry in english():
        if not entry.id or not entry.string:
            continue
        if entry.pluralizable:
            singular, plural = tuple(entry.id)[:2]  # type: ignore[misc]
            pairs = list(zip((singular, plural), tuple(entry.string), strict=False))
        else:
            pairs = [(entry.id, entry.string)]
        for source, translation in pairs:
            if translation and placeholders(source) != placeholders(translation):
                problems.append(f"{source!r} → {translation!r}")
    assert not problems, "translations changed their placeholders:\n" + "\n".join(problems)


def test_gettext_follows_the_current_language() -> None:
    assert i18n.current_language() == "fr"
    assert i18n.gettext("Se connecter") == "Se connecter"
    lazy = i18n.lazy_gettext("Se connecter")
    with i18n.use_language("en"):
        assert i18n.gettext("Se connecter") == "Log in"
        assert str(lazy) == "Log in"
        assert i18n.gettext("Pas dans le catalogue") == "Pas dans le catalogue"
    assert i18n.gettext("Se connecter") == "Se connecter"
    assert str(lazy) == "Se connecter"


@pytest.mark.parametrize(
    ("language", "count", "expected"),
    [
        ("fr", 0, "0 compte"),
        ("fr", 1, "1 compte"),
        ("fr", 2, "2 comptes"),
        ("en", 0, "0 accounts"),
        ("en", 1, "1 account"),
        ("en", 2, "2 accounts"),
    ],
)
def test_ngettext_plural_rules(language: str, count: int, expected: str) -> None:
    singular, plural = "%(num)d compte", "%(num)d comptes"
    environment = Environment(extensions=["jinja2.ext.i18n"], autoescape=True)
    environment.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)  # type: ignore[attr-defined]
    template = environment.from_string(f'{{{{ ngettext("{singular}", "{plural}", n) }}}}')
    with i18n.use_language(language):
        assert i18n.ngettext(singular, plural, count) == "%(num)d " + expected.split(" ", 1)[1]
        assert template.render(n=count) == expected
