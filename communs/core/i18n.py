"""Translations: French is the source language and the default; English is a catalogue.

Messages are written in French in the code and templates; ``translations/en`` holds
their English. Catalogues are read from the ``.po`` files at start-up (no compile step).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from babel.messages.pofile import read_po
from babel.support import LazyProxy

TRANSLATIONS_DIR = Path(__file__).parent / "translations"
SOURCE_LANGUAGE = "fr"
LANGUAGE_NAMES = {"fr": "Français", "en": "English"}

_current_language: contextvars.ContextVar[str] = contextvars.ContextVar(
    "communs_language", default=SOURCE_LANGUAGE
)


@cache
def catalogue(language: str) -> dict[str | tuple[str, str], str | tuple[str, ...]]:
    """msgid (or (singular, plural)) → translation, for one language."""
    path = TRANSLATIONS_DIR / language / "LC_MESSAGES" / "messages.po"
    if language == SOURCE_LANGUAGE or not path.exists():
        return {}
    with path.open("rb") as handle:
        messages = read_po(handle, locale=language)
    entries: dict[str | tuple[str, str], str | tuple[str, ...]] = {}
    for message in messages:
        if not message.id or not message.string or message.fuzzy:
            continue
        key = tuple(message.id) if isinstance(message.id, (list, tuple)) else message.id
        entries[key] = (
            tuple(message.string) if isinstance(message.string, (list, tuple)) else message.string
        )
    return entries


def current_language() -> str:
    return _current_language.get()


def set_language(language: str) -> contextvars.Token[str]:
    return _current_language.set(language)


@contextmanager
def use_language(language: str) -> Iterator[None]:
    token = _current_language.set(language)
    try:
        yield
    finally:
        _current_language.reset(token)


def gettext(message: str) -> str:
    translated = catalogue(current_language()).get(message)
    return translated if isinstance(translated, str) else message


def ngettext(singular: str, plural: str, count: int) -> str:
    translated = catalogue(current_language()).get((singular, plural))
    if isinstance(translated, tuple) and len(translated) >= 2:
        return translated[0] if count == 1 else translated[1]
    # French treats 0 and 1 as singular; English only 1.
    is_singular = count in (0, 1) if current_language() == "fr" else count == 1
    return singular if is_singular else plural


def lazy_gettext(message: str) -> LazyProxy:
    return LazyProxy(gettext, message, enable_cache=False)


_ = gettext


def negotiate(accept_language: str | None, available: tuple[str, ...]) -> str | None:
    """The first language of an Accept-Language header that we offer."""
    if not accept_language:
        return None
    weighted: list[tuple[float, str]] = []
    for part in accept_language.split(","):
        pieces = part.strip().split(";q=")
        code = pieces[0].strip().lower().split("-")[0]
        try:
            quality = float(pieces[1]) if len(pieces) > 1 else 1.0
        except ValueError:
            continue
        weighted.append((quality, code))
    for _quality, code in sorted(weighted, key=lambda item: -item[0]):
        if code in available:
            return code
    return None
