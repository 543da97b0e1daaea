"""Query parameters of NGSI-LD retrieval: type expressions, pagination, formats."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from communs.hub.context import TermMap
from communs.hub.errors import BadRequestData

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
FORMATS = {"normalized", "concise", "keyValues", "simplified"}
_TYPE_TOKEN = re.compile(r"\s*([(),;|]|[^(),;|\s]+)")


@dataclass(frozen=True)
class TypeSelection:
    """A type expression: ``A,B`` or ``A|B`` (any), ``A;B`` (all), with parentheses."""

    any_of: tuple[str, ...]
    predicate: Callable[[list[str]], bool] | None = None

    def matches(self, types: list[str]) -> bool:
        if self.predicate is not None:
            return self.predicate(types)
        return bool(set(self.any_of) & set(types))


def parse_type_selection(text: str, terms: TermMap) -> TypeSelection:
    tokens = _tokens(text)
    if not tokens:
        raise BadRequestData("type must not be empty")
    if not {"(", ")", ";"} & set(tokens):
        names = [token for token in tokens if token not in {",", "|"}]
        if len(names) * 2 - 1 != len(tokens) or any(
            token not in {",", "|"} for token in tokens[1::2]
        ):
            raise BadRequestData(f"invalid type expression: {text!r}")
        return TypeSelection(tuple(dict.fromkeys(terms.expand(n) for n in names)))
    parser = _TypeParser(tokens, terms)
    predicate, names = parser.parse()
    return TypeSelection(tuple(names), predicate)


def _tokens(text: str) -> list[str]:
    position, tokens = 0, []
    text = text.strip()
    while position < len(text):
        match = _TYPE_TOKEN.match(text, position)
        if match is None or not match.group(1):
            raise BadRequestData(f"invalid type expression: {text!r}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


class _TypeParser:
    """or := and (("," | "|") and)* ; and := atom (";" atom)* ; atom := name | "(" or ")"."""

    def __init__(self, tokens: list[str], terms: TermMap) -> None:
        self.tokens, self.position, self.terms = tokens, 0, terms
        self.names: list[str] = []

    def parse(self) -> tuple[Callable[[list[str]], bool], list[str]]:
        predicate = self._or(0)
        if self.position != len(self.tokens):
            raise BadRequestData(
                "invalid type expression: unexpected " + self.tokens[self.position]
            )
        return predicate, self.names

    def _peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def _or(self, depth: int) -> Callable[[list[str]], bool]:
        parts = [self._and(depth)]
        while self._peek() in {",", "|"}:
            self.position += 1
            parts.append(self._and(depth))
        return parts[0] if len(parts) == 1 else lambda types: any(p(types) for p in parts)

    def _and(self, depth: int) -> Callable[[list[str]], bool]:
        parts = [self._atom(depth)]
        while self._peek() == ";":
            self.position += 1
            parts.append(self._atom(depth))
        return parts[0] if len(parts) == 1 else lambda types: all(p(types) for p in parts)

    def _atom(self, depth: int) -> Callable[[list[str]], bool]:
        token = self._peek()
        if token is None or token in {",", "|", ";", ")"}:
            raise BadRequestData("invalid type expression: a type name is missing")
        self.position += 1
        if token == "(":
            if depth > 16:
                raise BadRequestData("type expression nested too deeply")
            inner = self._or(depth + 1)
            if self._peek() != ")":
                raise BadRequestData("invalid type expression: missing ')'")
            self.position += 1
            return inner
        iri = self.terms.expand(token)
        self.names.append(iri)
        return lambda types: iri in types


def parse_limit(params: Any) -> tuple[int, int]:
    limit = _integer(params.get("limit"), "limit", DEFAULT_LIMIT)
    offset = _integer(params.get("offset"), "offset", 0)
    if limit > MAX_LIMIT:
        raise BadRequestData(f"limit must not exceed {MAX_LIMIT}; page with offset instead")
    return limit, offset


def _integer(raw: str | None, name: str, default: int) -> int:
    if raw is None:
        return default
    if not raw.isdigit():
        raise BadRequestData(f"{name} must be a non-negative integer: {raw!r}")
    return int(raw)


def parse_options(params: Any) -> tuple[str, bool]:
    """(representation, sysAttrs) from ``options`` and ``format``."""
    options = {o.strip() for o in (params.get("options") or "").split(",") if o.strip()}
    unknown = options - {
        "keyValues",
        "concise",
        "normalized",
        "sysAttrs",
        "simplified",
        "noOverwrite",
        "replace",
        "update",
    }
    if unknown:
        raise BadRequestData(f"unknown options: {', '.join(sorted(unknown))}")
    form = params.get("format") or next(
        (o for o in ("keyValues", "simplified", "concise", "normalized") if o in options),
        "normalized",
    )
    if form not in FORMATS:
        raise BadRequestData(f"unknown format {form!r}")
    return ("keyValues" if form == "simplified" else form), "sysAttrs" in options


def split_list(raw: str | None) -> list[str]:
    return [item.strip() for item in (raw or "").split(",") if item.strip()]
