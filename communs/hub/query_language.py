"""The NGSI-LD query language (``q``, GS CIM 009 clause 4.9) and scope queries (``scopeQ``, 4.19).

``parse_q`` turns a ``q`` string into an immutable tree of ``And``, ``Or`` and ``Term``
nodes; ``bind`` expands its attribute names to IRIs with the request's @context; ``matches``
evaluates it against an entity document of the hub (attributes keyed by IRI, each a list of
instances, one per datasetId). ``parse_scope_q`` and ``scope_matches`` do the same for
``scopeQ``. Any string either parses or raises ``QuerySyntaxError``.

Where the specification leaves room, this module chooses:

- ``;`` (AND) binds tighter than ``|`` (OR); parentheses nest up to ``MAX_DEPTH`` levels.
  Blanks are allowed around operators, logical operators, parentheses and list commas.
- An attribute path is ``name``, ``name.sub`` (one level: a sub-attribute, or one of the
  members ``observedAt``, ``unitCode``, ``createdAt``, ``modifiedAt``, ``datasetId``), then
  optionally members of the value in brackets: ``address[city]``, ``a[b.c]`` or ``a[b][c]``.
  Deeper dotted paths and linked-entity paths (``rel{attr}``) are rejected.
- Names are a Unicode letter or ``_`` then letters, digits, ``_``, ``-`` or ``:`` (so compact
  IRIs such as ``schema:name`` work). A name followed by ``//`` is a full IRI running up to the
  operator, ``[``, a logical operator, a parenthesis or a blank; its dots belong to the IRI, so a
  full IRI cannot be followed by ``.sub`` (use a term or compact IRI for that).
- Values: JSON numbers, JSON strings in double quotes, ``true``/``false``, unquoted ISO 8601
  DateTime, Date and Time literals, ``low..high`` ranges and ``a,b,c`` lists (both only after
  ``==``/``!=``). Any other unquoted run is kept as a string: a URI, or a bare word as in the
  spec's ``gender==Male``. Ordering operators take numbers, strings and temporal values.
- ``~=``/``!~=`` take the rest of the term as a regular expression, searched anywhere in the
  text by RE2 in linear time (see ``communs.hub.regex``). It ends at a ``;``, ``|`` or ``)``
  outside its own groups and character classes, so an alternation at its top level must be
  grouped or quoted. A pattern in double quotes is used as written, ``\\"`` standing for a
  quote. Patterns are limited to ``MAX_REGEX_LENGTH`` characters.
- Comparison: numbers numerically; temporal values as instants when both sides parse as ISO
  8601 (a Date against a DateTime counts as midnight UTC, naive times as UTC); other strings by
  code point. Values of another type never match ``==``, ordering or pattern operators, but are
  "unequal" for ``!=`` as the spec says. ``!=`` needs the target element to exist, and holds
  when no element of the target value equals the query value.
- Relationships (``object``, ``objectList``) only match ``==`` and ``!=``. A LanguageProperty
  matches on any language, or on one with ``name[fr]`` (``name[*]`` for any). Bracket members
  look inside the value of a Property or JsonProperty; on an array they look inside each object
  element. ``{"@value": ...}`` values compare on their ``@value``. Once ``bind`` has run,
  VocabProperty values (stored as IRIs) compare with the query value expanded the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any, Union, cast

from communs.hub.regex import Pattern, RegexError, compile_regex

MAX_LENGTH = 4096
MAX_DEPTH = 32
MAX_REGEX_LENGTH = 256
MEMBER_KEYWORDS = frozenset({"observedAt", "unitCode", "createdAt", "modifiedAt", "datasetId"})
EQUALITY_OPERATORS = frozenset({"==", "!="})
PATTERN_OPERATORS = frozenset({"~=", "!~="})
OPERATORS = ("!~=", "==", "!=", ">=", "<=", "~=", ">", "<")

Scalar = bool | int | float | str | datetime | date | time


class QuerySyntaxError(ValueError):
    """A ``q`` or ``scopeQ`` string that is not valid (NGSI-LD: BadRequestData)."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"invalid query at position {position}: {reason}")
        self.reason = reason
        self.position = position


@dataclass(frozen=True, slots=True)
class AttributePath:
    """``attribute[.sub][[member]...]``: ``sub`` is a sub-attribute or a member keyword."""

    attribute: str
    sub: str | None = None
    members: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Range:
    """``low..high``, both bounds included."""

    low: Scalar
    high: Scalar


TermValue = Scalar | Range | tuple[Scalar, ...] | Pattern | None


@dataclass(frozen=True, slots=True)
class Term:
    """One query term; ``op`` None tests existence, a tuple ``value`` is a value list.

    ``vocab_value`` is ``value`` with its strings expanded to IRIs by ``bind``: VocabProperty
    values are stored expanded, so ``==``/``!=`` compare them with it.
    """

    path: AttributePath
    op: str | None = None
    value: TermValue = None
    vocab_value: TermValue = None


@dataclass(frozen=True, slots=True)
class ScopePattern:
    """``/a/+/c``, with ``descendants`` for a trailing ``/#``; ``/#`` alone has no levels."""

    levels: tuple[str, ...]
    descendants: bool = False


Node = Union["And", "Or", Term, ScopePattern]


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


Query = And | Or | Term
ScopeQuery = And | Or | ScopePattern


# ------------------------------------------------------------------------------ parsing


class _Parser:
    """Logical structure shared by ``q`` and ``scopeQ``; subclasses parse the leaves."""

    or_operators = "|"

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def error(self, reason: str, position: int | None = None) -> QuerySyntaxError:
        return QuerySyntaxError(reason, self.pos if position is None else position)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def at(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def skip_blanks(self) -> None:
        while self.peek().isspace():
            self.pos += 1

    def describe(self) -> str:
        return repr(self.peek()) if self.peek() else "end of input"

    def parse(self) -> Node:
        if len(self.text) > MAX_LENGTH:
            raise self.error(f"query longer than {MAX_LENGTH} characters", MAX_LENGTH)
        self.skip_blanks()
        if not self.peek():
            raise self.error("empty query")
        tree = self.disjunction()
        if self.peek():
            raise self.error(f"unexpected {self.describe()}")
        return tree

    def disjunction(self) -> Node:
        children = [self.conjunction()]
        while self.peek() and self.peek() in self.or_operators:
            self.pos += 1
            children.append(self.conjunction())
        return _combine(Or, children)

    def conjunction(self) -> Node:
        children = [self.operand()]
        while self.peek() == ";":
            self.pos += 1
            children.append(self.operand())
        return _combine(And, children)

    def operand(self) -> Node:
        self.skip_blanks()
        node = self.group() if self.peek() == "(" else self.leaf()
        self.skip_blanks()
        return node

    def group(self) -> Node:
        opening = self.pos
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"parentheses nested deeper than {MAX_DEPTH} levels")
        self.pos += 1
        node = self.disjunction()
        if self.peek() != ")":
            raise self.error(f"expected ')' to close the '(' at position {opening}")
        self.pos += 1
        self.depth -= 1
        return node

    def leaf(self) -> Node:
        raise NotImplementedError


def _combine(kind: type[And] | type[Or], children: list[Node]) -> Node:
    if len(children) == 1:
        return children[0]
    flat: list[Node] = []
    for child in children:
        flat.extend(child.children if isinstance(child, kind) else (child,))
    return kind(tuple(flat))


def _is_name_start(char: str) -> bool:
    return char.isalpha() or char == "_"


def _is_name_char(char: str) -> bool:
    return char.isalnum() or char in "_-:"


def _is_member_char(char: str) -> bool:
    return char.isalnum() or char in "_-:@$"


_IRI_STOP = frozenset('"<>[]{}|;()=')
_VALUE_STOP = frozenset(',;|()"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_JSON = json.JSONDecoder(strict=False)


class _QueryParser(_Parser):
    def leaf(self) -> Term:
        path = self.path()
        self.skip_blanks()
        op = self.operator()
        if op is None:
            if self.peek() and self.peek() not in ";|)":
                raise self.error(
                    f"expected an operator after the attribute, found {self.describe()}"
                )
            return Term(path)
        self.skip_blanks()
        if op in PATTERN_OPERATORS:
            return Term(path, op, self.pattern())
        return Term(path, op, self.value(op))

    # -- attribute paths

    def path(self) -> AttributePath:
        start = self.pos
        attribute = self.name()
        names = [attribute]
        if "//" not in attribute:
            while self.peek() == ".":
                self.pos += 1
                names.append(self.name(allow_iri=False))
        if len(names) > 2:
            raise self.error("only one level of sub-attribute is supported", start)
        if self.peek() == "{":
            raise self.error("linked-entity paths ('{...}') are not supported")
        sub = names[1] if len(names) == 2 else None
        members = self.members()
        if members and sub in MEMBER_KEYWORDS:
            raise self.error(f"'{sub}' has no members to select with '[...]'", start)
        return AttributePath(attribute, sub, members)

    def name(self, *, allow_iri: bool = True) -> str:
        start = self.pos
        if not _is_name_start(self.peek()):
            raise self.error(f"expected an attribute name, found {self.describe()}")
        while self.peek() and _is_name_char(self.peek()):
            self.pos += 1
        name = self.text[start : self.pos]
        if allow_iri and self.at("//") and _SCHEME.fullmatch(name):
            return name + self.iri_rest()
        if name.endswith(":"):
            raise self.error(f"incomplete compact IRI {name!r}", start)
        return name

    def iri_rest(self) -> str:
        start = self.pos
        self.pos += 2
        while self.peek() and not self.iri_stops():
            self.pos += 1
        if self.pos == start + 2:
            raise self.error("incomplete IRI")
        return self.text[start : self.pos]

    def iri_stops(self) -> bool:
        char = self.peek()
        return (
            char.isspace() or char in _IRI_STOP or self.at("!=") or self.at("!~=") or self.at("~=")
        )

    def members(self) -> tuple[str, ...]:
        members: list[str] = []
        while self.peek() == "[":
            opening = self.pos
            self.pos += 1
            members.append(self.member())
            while self.peek() == ".":
                self.pos += 1
                members.append(self.member())
            if self.peek() != "]":
                raise self.error(f"expected ']' to close the '[' at position {opening}")
            self.pos += 1
        return tuple(members)

    def member(self) -> str:
        start = self.pos
        if self.peek() == "*":
            self.pos += 1
            return "*"
        while self.peek() and _is_member_char(self.peek()):
            self.pos += 1
        if self.pos == start:
            raise self.error(f"expected a member name, found {self.describe()}")
        return self.text[start : self.pos]

    # -- operators and values

    def operator(self) -> str | None:
        for op in OPERATORS:
            if self.at(op):
                self.pos += len(op)
                return op
        if self.peek() == "=":
            raise self.error("unknown operator '=': equality is '=='")
        if self.peek() in ("!", "~"):
            raise self.error(f"unknown operator starting with {self.describe()}")
        return None

    def value(self, op: str) -> TermValue:
        first = self.scalar()
        self.skip_blanks()
        if self.at(".."):
            return self.range(op, first)
        items = [first]
        while self.peek() == ",":
            if op not in EQUALITY_OPERATORS:
                raise self.error("value lists are only allowed after '==' and '!='")
            self.pos += 1
            self.skip_blanks()
            items.append(self.scalar())
            self.skip_blanks()
        if len(items) > 1:
            return tuple(items)
        if op not in EQUALITY_OPERATORS and isinstance(first, bool):
            raise self.error(f"'{op}' cannot compare booleans")
        return first

    def range(self, op: str, low: Scalar) -> Range:
        start = self.pos
        if op not in EQUALITY_OPERATORS:
            raise self.error("ranges are only allowed after '==' and '!='")
        self.pos += 2
        self.skip_blanks()
        high = self.scalar()
        self.skip_blanks()
        kind = _kind(low)
        if kind == "boolean" or kind != _kind(high):
            raise self.error("range bounds must be two numbers, strings, dates or times", start)
        return Range(low, high)

    def scalar(self) -> Scalar:
        if self.peek() == '"':
            return self.string()
        start = self.pos
        while self.peek() and not self.value_stops():
            self.pos += 1
        if self.pos == start:
            raise self.error(f"expected a value, found {self.describe()}")
        return _literal(self.text[start : self.pos])

    def value_stops(self) -> bool:
        char = self.peek()
        return char.isspace() or char in _VALUE_STOP or self.at("..")

    def string(self) -> str:
        start = self.pos
        end = self.closing_quote()
        try:
            decoded = _JSON.decode(self.text[start : end + 1])
        except ValueError as exc:
            raise self.error("invalid string literal", start) from exc
        return decoded

    def closing_quote(self) -> int:
        index = self.pos + 1
        while index < len(self.text):
            char = self.text[index]
            if char == '"':
                self.pos = index + 1
                return index
            index += 2 if char == "\\" else 1
        raise self.error("unterminated string")

    def pattern(self) -> Pattern:
        start = self.pos
        if self.peek() == '"':
            end = self.closing_quote()
            source = self.text[start + 1 : end].replace('\\"', '"')
        else:
            self.pos = _pattern_end(self.text, start)
            source = self.text[start : self.pos]
        return _compile_pattern(source, start)


def _kind(value: Scalar) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, datetime):
        return "datetime"
    return type(value).__name__


def _literal(raw: str) -> Scalar:
    if raw in ("true", "false"):
        return raw == "true"
    if _NUMBER.fullmatch(raw):
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    temporal = _temporal(raw)
    return raw if temporal is None else temporal


# Inside a character class: an escape, a POSIX class, or one character.
_CLASS_TOKEN = re.compile(r"\\.|\[:[a-z]+:\]|.", re.DOTALL)


def _pattern_end(text: str, start: int) -> int:
    depth, index = 0, start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 1
        elif char == "[":
            index = _class_end(text, index)
        elif char == "(":
            depth += 1
        elif depth == 0 and char in ");|":
            return index
        elif char == ")":
            depth -= 1
        index += 1
    return len(text)


def _class_body_start(text: str, index: int) -> int:
    """Skip ``^`` and a leading ``]``, which are part of a character class, not its end."""
    if text.startswith("^", index):
        index += 1
    if text.startswith("]", index):
        index += 1
    return index


def _class_end(text: str, index: int) -> int:
    """The index of the ``]`` closing the character class opened at ``index`` (or the end)."""
    index = _class_body_start(text, index + 1)
    while index < len(text) and text[index] != "]":
        token = _CLASS_TOKEN.match(text, index)
        index = token.end() if token else index + 1
    return index


def _compile_pattern(source: str, position: int) -> Pattern:
    if not source:
        raise QuerySyntaxError("empty regular expression", position)
    if len(source) > MAX_REGEX_LENGTH:
        raise QuerySyntaxError(
            f"regular expression longer than {MAX_REGEX_LENGTH} characters", position
        )
    try:
        return compile_regex(source)
    except RegexError as exc:
        raise QuerySyntaxError(f"invalid regular expression ({exc})", position) from exc


class _ScopeParser(_Parser):
    or_operators = "|,"

    def leaf(self) -> ScopePattern:
        if self.peek() != "/":
            raise self.error(f"expected a scope starting with '/', found {self.describe()}")
        levels: list[str] = []
        while self.peek() == "/":
            self.pos += 1
            if self.peek() == "#":
                self.pos += 1
                return ScopePattern(tuple(levels), descendants=True)
            levels.append(self.level())
        return ScopePattern(tuple(levels))

    def level(self) -> str:
        start = self.pos
        if self.peek() == "+":
            self.pos += 1
            return "+"
        while self.peek() and (self.peek().isalnum() or self.peek() in "_-"):
            self.pos += 1
        if self.pos == start:
            raise self.error(f"expected a scope level, '+' or '#', found {self.describe()}")
        return self.text[start : self.pos]


def parse_q(text: str) -> Query:
    """The tree of an NGSI-LD ``q`` string; raises ``QuerySyntaxError`` if it is not valid."""
    return cast(Query, _QueryParser(text).parse())


def parse_scope_q(text: str) -> ScopeQuery:
    """The tree of a ``scopeQ`` string such as ``/Madrid/+/ParqueNorte|/CompanyA/#``."""
    return cast(ScopeQuery, _ScopeParser(text).parse())


# ----------------------------------------------------------------------- tree helpers


def terms(query: Node) -> Iterator[Term]:
    """The terms of ``query``, left to right."""
    if isinstance(query, Term):
        yield query
    elif isinstance(query, And | Or):
        for child in query.children:
            yield from terms(child)


def attribute_names(query: Query) -> set[str]:
    """The top-level attribute names (IRIs once bound) that ``query`` refers to."""
    return {term.path.attribute for term in terms(query)}


def bind(query: Query, expand: Callable[[str], str]) -> Query:
    """``query`` with attribute and sub-attribute names expanded to IRIs by ``expand``.

    The member keywords (``observedAt``...) stay as they are, and so do bracket members,
    which are JSON keys inside a value. String values after ``==``/``!=`` are also expanded,
    into ``Term.vocab_value``, for comparison with VocabProperty values.
    """
    return cast(Query, _bind(query, expand))


def _bind(node: Node, expand: Callable[[str], str]) -> Node:
    if isinstance(node, Term):
        vocab_value = _expand_strings(node.value, expand) if node.op in EQUALITY_OPERATORS else None
        return replace(node, path=_bind_path(node.path, expand), vocab_value=vocab_value)
    if isinstance(node, And | Or):
        return type(node)(tuple(_bind(child, expand) for child in node.children))
    return node


def _bind_path(path: AttributePath, expand: Callable[[str], str]) -> AttributePath:
    sub = path.sub
    if sub is not None and sub not in MEMBER_KEYWORDS:
        sub = expand(sub)
    return replace(path, attribute=expand(path.attribute), sub=sub)


def _expand_strings(value: TermValue, expand: Callable[[str], str]) -> TermValue:
    if isinstance(value, str):
        return expand(value)
    if isinstance(value, tuple):
        return tuple(expand(item) if isinstance(item, str) else item for item in value)
    return None


def _evaluate(node: Node, leaf: Callable[[Any], bool]) -> bool:
    if isinstance(node, And):
        return all(_evaluate(child, leaf) for child in node.children)
    if isinstance(node, Or):
        return any(_evaluate(child, leaf) for child in node.children)
    return leaf(node)


# ------------------------------------------------------------------------ evaluation


@dataclass(frozen=True, slots=True)
class _Target:
    """The candidate values of one target element (array elements taken apart)."""

    values: tuple[Any, ...]
    relationship: bool = False
    vocab: bool = False


def matches(query: Query, entity: Mapping[str, Any]) -> bool:
    """Whether ``entity`` (an entity document, attributes keyed as in ``query``) matches."""
    return _evaluate(query, lambda term: _term_matches(term, entity))


def _term_matches(term: Term, entity: Mapping[str, Any]) -> bool:
    return any(_target_matches(term, target) for target in _targets(entity, term.path))


def _targets(entity: Mapping[str, Any], path: AttributePath) -> Iterator[_Target]:
    for instance in _instances(entity.get(path.attribute)):
        if path.sub in MEMBER_KEYWORDS:
            member = instance.get(path.sub)
            if member is not None:
                yield _Target(_spread(member))
            continue
        nodes = [instance] if path.sub is None else _instances(instance.get(path.sub))
        for node in nodes:
            target = _node_target(node, path.members)
            if target is not None:
                yield target


def _instances(node: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(node, Mapping):
        yield node
    elif isinstance(node, list):
        yield from (item for item in node if isinstance(item, Mapping))


def _node_target(node: Mapping[str, Any], members: tuple[str, ...]) -> _Target | None:
    if "object" in node or "objectList" in node:
        return None if members else _relationship_target(node)
    if isinstance(node.get("languageMap"), Mapping):
        return _language_target(node["languageMap"], members)
    for key in ("value", "valueList", "json"):
        if key in node:
            return _member_target(node[key], members)
    if "vocab" in node and not members:
        values = _spread(node["vocab"])
        return _Target(values, vocab=True) if values else None
    return None


MAX_INDEXED_TEXT = 256


def index_values(instance: Mapping[str, Any]) -> tuple[list[float], list[str]]:
    """The numbers and texts a top-level term (no sub-attribute, no member) can compare
    against in this attribute instance: what the value index must hold for ``q``."""
    scalar = _plain_scalar(instance)
    if scalar is not None:
        return scalar
    if instance.get("type") == "GeoProperty":  # a GeoJSON object: no top-level scalar
        return [], []
    target = _node_target(instance, ())
    if target is None:
        return [], []
    numbers = [
        float(v) for v in target.values if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    texts = [v for v in target.values if isinstance(v, str) and len(v) <= MAX_INDEXED_TEXT]
    return numbers, texts


def _plain_scalar(instance: Mapping[str, Any]) -> tuple[list[float], list[str]] | None:
    """The common case, decided without the general walk: one scalar value or object."""
    kind = instance.get("type")
    value = instance.get("object") if kind == "Relationship" else instance.get("value")
    if kind not in ("Property", "Relationship") or type(value) not in (int, float, str, bool):
        return None
    if type(value) is str:
        return [], [value] if len(value) <= MAX_INDEXED_TEXT else []
    return ([float(value)], []) if type(value) is not bool else ([], [])


def is_temporal_text(value: str) -> bool:
    """Strings that compare as date-times, not as text (so text equality cannot filter)."""
    return _temporal(value) is not None


def _relationship_target(node: Mapping[str, Any]) -> _Target | None:
    if "object" in node:
        objects = node["object"]
    else:
        listed = node["objectList"]
        objects = [_object_of(item) for item in listed] if isinstance(listed, list) else listed
    values = _spread(objects)
    return _Target(values, relationship=True) if values else None


def _object_of(item: Any) -> Any:
    return item.get("object") if isinstance(item, Mapping) else item


def _language_target(language_map: Mapping[str, Any], members: tuple[str, ...]) -> _Target | None:
    if len(members) > 1:
        return None
    if not members or members[0] == "*":
        texts = language_map.values()
    else:
        wanted = members[0].lower()
        texts = [text for tag, text in language_map.items() if str(tag).lower() == wanted]
    values = tuple(value for text in texts for value in _spread(text))
    return _Target(values) if values else None


def _member_target(value: Any, members: tuple[str, ...]) -> _Target | None:
    found = [value]
    for member in members:
        found = [item for parent in found for item in _children(parent, member)]
    values = tuple(value for item in found for value in _spread(item))
    # An attribute whose value is an empty array still exists.
    return _Target(values) if values or (not members and value == []) else None


def _children(parent: Any, member: str) -> Iterator[Any]:
    items = parent if isinstance(parent, list) else [parent]
    for item in items:
        if isinstance(item, Mapping) and member in item:
            yield item[member]


def _spread(value: Any) -> tuple[Any, ...]:
    """The candidates of a target value: its elements if an array, ``@value`` unwrapped."""
    items = value if isinstance(value, list) else [value]
    unwrapped = (_unwrap(item) for item in items)
    return tuple(item for item in unwrapped if item is not None)


def _unwrap(value: Any) -> Any:
    if isinstance(value, Mapping) and "@value" in value:
        return value["@value"]
    return value


def _target_matches(term: Term, target: _Target) -> bool:
    op, expected = term.op, term.value
    if target.vocab and term.vocab_value is not None:
        expected = term.vocab_value
    if op is None:
        return True
    if target.relationship and op not in EQUALITY_OPERATORS:
        return False
    if op == "==":
        return any(_equals(value, expected) for value in target.values)
    if op == "!=":
        return not any(_equals(value, expected) for value in target.values)
    if isinstance(expected, Pattern):
        return _pattern_matches(op, expected, target.values)
    return any(_ordered(op, value, expected) for value in target.values)


def _equals(value: Any, expected: TermValue) -> bool:
    if isinstance(expected, Range):
        low, high = _compare(value, expected.low), _compare(value, expected.high)
        return low is not None and high is not None and low >= 0 and high <= 0
    if isinstance(expected, tuple):
        return any(_compare(value, item) == 0 for item in expected)
    return _compare(value, expected) == 0


_ORDERINGS: dict[str, Callable[[int], bool]] = {
    ">": lambda order: order > 0,
    ">=": lambda order: order >= 0,
    "<": lambda order: order < 0,
    "<=": lambda order: order <= 0,
}


def _ordered(op: str, value: Any, expected: TermValue) -> bool:
    order = _compare(value, expected)
    return order is not None and _ORDERINGS[op](order)


def _pattern_matches(op: str, pattern: Pattern, values: Sequence[Any]) -> bool:
    texts = [value for value in values if isinstance(value, str)]
    found = any(pattern.search(text) for text in texts)
    return found if op == "~=" else bool(texts) and not found


def _compare(value: Any, expected: Any) -> int | None:
    """-1, 0 or 1 ordering ``value`` against ``expected``; None if they are not comparable."""
    pair = _comparable(value, expected)
    if pair is None:
        return None
    left, right = pair
    return (left > right) - (left < right)


def _comparable(value: Any, expected: Any) -> tuple[Any, Any] | None:
    if isinstance(expected, bool) or isinstance(value, bool):
        both = isinstance(expected, bool) and isinstance(value, bool)
        return (value, expected) if both else None
    if isinstance(expected, int | float):
        return (value, expected) if isinstance(value, int | float) else None
    if isinstance(expected, date | time):
        return _temporal_pair(value, expected)
    if isinstance(expected, str) and isinstance(value, str):
        pair = _temporal_pair(value, _temporal(expected))
        return pair if pair is not None else (value, expected)
    return None


def _temporal_pair(value: Any, expected: date | time | None) -> tuple[Any, Any] | None:
    parsed = _temporal(value) if isinstance(value, str) else None
    if parsed is None or expected is None:
        return None
    parsed, expected = _promote(parsed), _promote(expected)
    return (parsed, expected) if type(parsed) is type(expected) else None


def _promote(value: date | time) -> date | time:
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return value


# ------------------------------------------------------------------ ISO 8601 literals

_DATETIME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})T([0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(\.[0-9]+)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?"
)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIME = re.compile(r"([0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(\.[0-9]+)?(Z|[+-][0-9]{2}:?[0-9]{2})?")


@lru_cache(maxsize=4096)
def _temporal(text: str) -> datetime | date | time | None:
    """A DateTime (aware, UTC), Date or Time (naive, UTC) literal, or None."""
    try:
        if found := _DATETIME.fullmatch(text):
            day, clock, fraction, zone = found.groups()
            return _instant(f"{day}T{clock}{(fraction or '')[:7]}{_zone(zone)}")
        if _DATE.fullmatch(text):
            return date.fromisoformat(text)
        if found := _TIME.fullmatch(text):
            clock, fraction, zone = found.groups()
            moment = _instant(f"2000-01-02T{clock}{(fraction or '')[:7]}{_zone(zone)}")
            return moment.time()
    except (ValueError, OverflowError):
        return None
    return None


def _zone(zone: str | None) -> str:
    return "+00:00" if zone in (None, "Z") else zone


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


# ----------------------------------------------------------------------------- scopes


def scope_matches(query: ScopeQuery, scopes: str | Iterable[str] | None) -> bool:
    """Whether an entity with ``scopes`` (its ``scope`` value) is selected by ``query``."""
    if isinstance(scopes, str):
        scopes = [scopes]
    split = [levels for levels in map(_scope_levels, scopes or ()) if levels]
    return _evaluate(query, lambda pattern: any(_scope_fits(pattern, s) for s in split))


def _scope_levels(scope: Any) -> tuple[str, ...]:
    if not isinstance(scope, str) or not scope.startswith("/"):
        return ()
    levels = tuple(scope[1:].split("/"))
    return levels if all(levels) else ()


def _scope_fits(pattern: ScopePattern, levels: tuple[str, ...]) -> bool:
    wanted = pattern.levels
    if len(levels) < len(wanted) or (len(levels) > len(wanted) and not pattern.descendants):
        return False
    return all(want in ("+", level) for want, level in zip(wanted, levels, strict=False))
