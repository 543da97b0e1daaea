"""JSON-LD @context handling for NGSI-LD, without a generic JSON-LD processor.

An NGSI-LD request names its vocabulary with user @contexts (a ``Link`` header or an
inline ``@context``); the core context always comes last and cannot be overridden.
``term_map`` turns such a list into a ``TermMap`` once, cached, so expanding an
attribute name or an entity type to its IRI, and compacting it back for a response,
are dictionary look-ups on the request path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

import orjson

from communs.hub.core_context import CORE_PREFIXES, CORE_TERMS, DEFAULT_VOCAB

CORE_CONTEXT_URLS = frozenset(
    {
        "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
        *(
            f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.{n}.jsonld"
            for n in range(3, 10)
        ),
    }
)
DEFAULT_CORE_CONTEXT_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
GEN_DELIMS = (":", "/", "?", "#", "[", "]", "@")
MAX_CONTEXT_DEPTH = 8
CACHE_SIZE = 512

Loader = Callable[[str], Any]


class InvalidContext(ValueError):
    """The @context itself is malformed (NGSI-LD: BadRequestData)."""


class ContextNotAvailable(LookupError):
    """A remote @context could not be obtained (NGSI-LD: LdContextNotAvailable)."""


@dataclass(frozen=True)
class Term:
    iri: str
    type: str | None = None
    container: str | None = None
    prefix: bool = False


@dataclass
class TermMap:
    """The active context of a request: user terms, then the protected core terms."""

    terms: dict[str, Term]
    vocab: str = DEFAULT_VOCAB
    _expanded: dict[str, str] = field(default_factory=dict, repr=False)
    _compacted: dict[str, str] = field(default_factory=dict, repr=False)
    _inverse: dict[str, str] | None = field(default=None, repr=False)

    def expand(self, value: str) -> str:
        """The IRI of an attribute name or entity type."""
        cached = self._expanded.get(value)
        if cached is None:
            cached = _expand_iri(self.terms, value, self.vocab)
            if len(self._expanded) < 65_536:
                self._expanded[value] = cached
        return cached

    def compact(self, iri: str) -> str:
        """The shortest name the caller's context gives to ``iri``."""
        cached = self._compacted.get(iri)
        if cached is None:
            cached = self._compact(iri)
            if len(self._compacted) < 65_536:
                self._compacted[iri] = cached
        return cached

    def term(self, name: str) -> Term | None:
        return self.terms.get(name)

    def _compact(self, iri: str) -> str:
        if self._inverse is None:
            self._inverse = _inverse(self.terms)
        exact = self._inverse.get(iri)
        if exact is not None:
            return exact
        if iri.startswith(self.vocab):
            suffix = iri[len(self.vocab) :]
            if suffix and suffix not in self.terms:
                return suffix
        candidates = [
            f"{name}:{iri[len(term.iri) :]}"
            for name, term in self.terms.items()
            if term.prefix and iri.startswith(term.iri) and len(iri) > len(term.iri)
        ]
        candidates = [c for c in candidates if c not in self.terms]
        if candidates:
            return min(candidates, key=lambda c: (len(c), c))
        return iri


def _inverse(terms: dict[str, Term]) -> dict[str, str]:
    """IRI → preferred term: plain terms before typed ones, then shortest, then first."""
    best: dict[str, tuple[tuple[int, int, str], str]] = {}
    for name, term in terms.items():
        if term.iri.startswith("@"):
            continue
        rank = (int(term.type is not None or term.container is not None), len(name), name)
        current = best.get(term.iri)
        if current is None or rank < current[0]:
            best[term.iri] = (rank, name)
    return {iri: name for iri, (_rank, name) in best.items()}


def _is_absolute_iri(value: str) -> bool:
    scheme, colon, _rest = value.partition(":")
    return (
        bool(colon)
        and scheme[:1].isalpha()
        and all(char.isalnum() or char in "+-." for char in scheme)
    )


def _expand_iri(terms: dict[str, Term], value: str, vocab: str) -> str:
    if value.startswith("@"):
        return value
    term = terms.get(value)
    if term is not None:
        return term.iri
    prefix, colon, suffix = value.partition(":")
    if colon:
        if prefix == "_" or suffix.startswith("//"):
            return value
        prefix_term = terms.get(prefix)
        if prefix_term is not None and prefix_term.prefix:
            return prefix_term.iri + suffix
        if _is_absolute_iri(value):
            return value
    return vocab + value


# ---------------------------------------------------------------- building a term map


def _core_terms() -> dict[str, Term]:
    terms = {}
    for name, definition in CORE_TERMS.items():
        iri = definition[0]
        type_ = definition[1] if len(definition) > 1 else None
        container = definition[2] if len(definition) > 2 else None
        if type_ is not None and not type_.startswith("@"):
            type_ = CORE_TERMS[type_][0] if type_ in CORE_TERMS else type_
        terms[name] = Term(iri, type_, container, prefix=False)
    for name, iri in CORE_PREFIXES.items():
        terms[name] = Term(iri, prefix=True)
    return terms


CORE = TermMap(_core_terms())


class _ContextBuilder:
    """Processes user contexts into term definitions (JSON-LD 1.1, the parts NGSI-LD uses)."""

    def __init__(self, loader: Loader | None) -> None:
        self.loader = loader
        self.terms: dict[str, Term] = {}

    def add(self, context: Any, depth: int = 0) -> None:
        if depth > MAX_CONTEXT_DEPTH:
            raise InvalidContext("@context nesting too deep")
        if context is None:
            self.terms = {}
        elif isinstance(context, list):
            for item in context:
                self.add(item, depth + 1)
        elif isinstance(context, str):
            self._add_url(context, depth)
        elif isinstance(context, dict):
            self._add_object(context)
        else:
            raise InvalidContext(f"invalid @context entry: {context!r}")

    def _add_url(self, url: str, depth: int) -> None:
        if url in CORE_CONTEXT_URLS:
            return  # the core context is always applied, last
        if not _is_absolute_iri(url):
            raise InvalidContext(f"@context must be an absolute URL: {url!r}")
        if self.loader is None:
            raise ContextNotAvailable(url)
        document = self.loader(url)
        if not isinstance(document, dict) or "@context" not in document:
            raise InvalidContext(f"{url} is not a JSON-LD context document")
        self.add(document["@context"], depth + 1)

    def _add_object(self, context: dict[str, Any]) -> None:
        pending = {key: value for key, value in context.items() if not key.startswith("@")}
        defining: set[str] = set()

        def define(name: str) -> None:
            if name not in pending:
                return
            if name in defining:
                raise InvalidContext(f"cyclic IRI mapping for term {name!r}")
            defining.add(name)
            value = pending[name]
            if value is None:
                self.terms.pop(name, None)
            else:
                self.terms[name] = self._definition(name, value, pending, define)
            pending.pop(name)
            defining.discard(name)

        for name in list(pending):
            define(name)

    def _definition(
        self, name: str, value: Any, pending: dict[str, Any], define: Callable[[str], None]
    ) -> Term:
        simple = isinstance(value, str)
        if simple:
            raw_iri, type_, container, explicit_prefix = value, None, None, None
        elif isinstance(value, dict):
            raw_iri = value.get("@id", name)
            type_ = value.get("@type")
            container = value.get("@container")
            explicit_prefix = value.get("@prefix")
            if raw_iri is None:
                raise InvalidContext(f"term {name!r} has a null @id")
        else:
            raise InvalidContext(f"invalid definition for term {name!r}")
        if not isinstance(raw_iri, str):
            raise InvalidContext(f"@id of term {name!r} must be a string")
        iri = self._expand_in_context(raw_iri, pending, define)
        if isinstance(type_, str) and not type_.startswith("@"):
            type_ = self._expand_in_context(type_, pending, define)
        if isinstance(container, list):
            container = container[0] if container else None
        prefix = (
            bool(explicit_prefix)
            if explicit_prefix is not None
            else (simple and iri.endswith(GEN_DELIMS) and ":" not in name)
        )
        return Term(iri, type_, container, prefix)

    def _expand_in_context(
        self, value: str, pending: dict[str, Any], define: Callable[[str], None]
    ) -> str:
        prefix, colon, _suffix = value.partition(":")
        if colon and prefix in pending:
            define(prefix)
        elif value in pending:
            define(value)
        return _expand_iri(self.terms, value, DEFAULT_VOCAB)


class _Cache:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[bytes, TermMap] = OrderedDict()
        self.lock = Lock()

    def get(self, key: bytes) -> TermMap | None:
        with self.lock:
            found = self.items.get(key)
            if found is not None:
                self.items.move_to_end(key)
            return found

    def put(self, key: bytes, value: TermMap) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_cache = _Cache(CACHE_SIZE)


def cached_term_map(context: Any) -> TermMap | None:
    """The term map of ``context`` if it needs no loading (built in, or already built)."""
    if context is None or (isinstance(context, str) and context in CORE_CONTEXT_URLS):
        return CORE
    return _cache.get(orjson.dumps(context, option=orjson.OPT_SORT_KEYS))


def term_map(context: Any, loader: Loader | None = None) -> TermMap:
    """The active context for user ``context`` (None, a URL, an object or a list)."""
    if context is None or (isinstance(context, str) and context in CORE_CONTEXT_URLS):
        return CORE
    key = orjson.dumps(context, option=orjson.OPT_SORT_KEYS)
    found = _cache.get(key)
    if found is not None:
        return found
    builder = _ContextBuilder(loader)
    builder.add(context)
    core = CORE.terms
    # The core context is protected: user definitions of core terms are ignored.
    terms = {name: term for name, term in builder.terms.items() if name not in core}
    terms.update(core)
    built = TermMap(terms)
    _cache.put(key, built)
    return built


def clear_cache() -> None:
    """Forget processed contexts (after the context store changes)."""
    with _cache.lock:
        _cache.items.clear()
