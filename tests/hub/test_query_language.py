"""The NGSI-LD query language: parsing, binding to IRIs and matching entity documents."""

from datetime import UTC, date, datetime, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from communs.hub.context import term_map
from communs.hub.query_language import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    AttributePath,
    Or,
    QuerySyntaxError,
    Range,
    ScopePattern,
    Term,
    attribute_names,
    bind,
    matches,
    parse_q,
    parse_scope_q,
    scope_matches,
)
from communs.hub.regex import compile_regex


def prop(value, **members):
    return [{"type": "Property", "value": value, **members}]


def rel(target, **members):
    return [{"type": "Relationship", "object": target, **members}]


def entity(**attributes):
    return {
        "id": "urn:ngsi-ld:Thing:1",
        "type": ["https://example.org/Thing"],
        "createdAt": "2024-01-01T00:00:00Z",
        "modifiedAt": "2024-01-02T00:00:00Z",
        **attributes,
    }


def language(**texts):
    return [{"type": "LanguageProperty", "languageMap": texts}]


PARKING = "urn:ngsi-ld:OffStreetParking:Downtown1"
T = entity  # keeps the table below readable

# (q, an entity that matches, an entity that does not)
CASES = [
    # clause 4.9 examples
    ("temperature", T(temperature=prop(20)), T(humidity=prop(20))),
    ("temperature==20", T(temperature=prop(20)), T(temperature=prop(21))),
    ("temperature==20", T(temperature=prop(20.0)), T(temperature=prop("20"))),
    ('brandName!="Mercedes"', T(brandName=prop("Audi")), T(brandName=prop("Mercedes"))),
    ('brandName!="Mercedes"', T(brandName=prop(4)), T(speed=prop(4))),
    (f"isParked=={PARKING}", T(isParked=rel(PARKING)), T(isParked=rel(PARKING + "0"))),
    (f'isParked=="{PARKING}"', T(isParked=rel(PARKING)), T(isParked=rel("urn:x:y"))),
    (f"isParked!={PARKING}", T(isParked=rel("urn:x:y")), T(isParked=rel(PARKING))),
    (
        'speed>50;brandName!="Mercedes"',
        T(speed=prop(60), brandName=prop("Audi")),
        T(speed=prop(60), brandName=prop("Mercedes")),
    ),
    ("isMonitoredBy", T(isMonitoredBy=rel("urn:ngsi-ld:Camera:1")), T()),
    (
        '((speed>50|rpm>3000);brandName=="Mercedes")',
        T(speed=prop(10), rpm=prop(3500), brandName=prop("Mercedes")),
        T(speed=prop(60), rpm=prop(3500), brandName=prop("Audi")),
    ),
    (
        "(temperature>=20;temperature<=25)|capacity==10",
        T(temperature=prop(22)),
        T(temperature=prop(26), capacity=prop(11)),
    ),
    (
        "(temperature>=20;temperature<=25)|capacity==10",
        T(temperature=prop(30), capacity=prop(10)),
        T(temperature=prop(19)),
    ),
    (
        "temperature>20;humidity<80",
        T(temperature=prop(25), humidity=prop(50)),
        T(temperature=prop(25), humidity=prop(90)),
    ),
    (
        "temperature.observedAt>=2017-12-24T12:00:00Z",
        T(temperature=prop(1, observedAt="2017-12-24T12:00:00Z")),
        T(temperature=prop(1, observedAt="2017-12-24T11:59:59Z")),
    ),
    (
        "temperature.observedAt>=2017-12-24T12:00:00Z",
        T(temperature=prop(1, observedAt="2017-12-24T13:30:00+01:00")),
        T(temperature=prop(1, observedAt="2017-12-24T12:30:00+01:00")),
    ),
    (
        "temperature.observedAt",
        T(temperature=prop(1, observedAt="2017-12-24T12:00:00Z")),
        T(temperature=prop(1)),
    ),
    (
        'address[addressLocality]=="Berlin"',
        T(address=prop({"addressLocality": "Berlin"})),
        T(address=prop({"addressLocality": "Paris"})),
    ),
    (
        'address[city]=="Berlin"',
        T(address=prop({"city": "Berlin", "street": "Ulrich Strasse"})),
        T(address=prop("Berlin")),
    ),
    (
        "address[addressLocality]",
        T(address=prop({"addressLocality": "Berlin"})),
        T(address=prop({"streetAddress": "1 rue"})),
    ),
    # ranges, lists and arrays
    ("temperature==20..25", T(temperature=prop(25)), T(temperature=prop(25.5))),
    ("temperature==20..25", T(temperature=prop(20)), T(temperature=prop("22"))),
    ("temperature!=20..25", T(temperature=prop(19)), T(temperature=prop(20))),
    ("temperature==-5.5..1e1", T(temperature=prop(-5)), T(temperature=prop(11))),
    ('name=="a".."c"', T(name=prop("b")), T(name=prop("d"))),
    (
        "dateObserved==2020-01-01T00:00:00Z..2020-12-31T23:59:59Z",
        T(dateObserved=prop("2020-06-01T00:00:00Z")),
        T(dateObserved=prop("2021-01-01T00:00:00Z")),
    ),
    ('color=="red","green"', T(color=prop("green")), T(color=prop("blue"))),
    ('color=="black", "red"', T(color=prop("red")), T(color=prop("blue"))),
    ('color!="red","green"', T(color=prop("blue")), T(color=prop("red"))),
    ('color=="red"', T(color=prop(["blue", "red", "green"])), T(color=prop(["blue", "black"]))),
    (
        'color!="red"',
        T(color=prop(["blue", "black", "green"])),
        T(color=prop(["blue", "red", "green"])),
    ),
    ('color=="black","red"', T(color=prop(["red", "blue"])), T(color=prop(["blue", "green"]))),
    ("level>3", T(level=prop([1, 5])), T(level=prop([1, 2]))),
    ("tags==1,2,true", T(tags=prop(True)), T(tags=prop(3))),
    # literals
    ("isOpen==true", T(isOpen=prop(True)), T(isOpen=prop(False))),
    ("isOpen==true", T(isOpen=prop(True)), T(isOpen=prop(1))),
    ("count==1", T(count=prop(1)), T(count=prop(True))),
    ("isOpen!=false", T(isOpen=prop(True)), T(isOpen=prop(False))),
    ("level>-1.5e1", T(level=prop(-10)), T(level=prop(-20))),
    ("level<=0", T(level=prop(0)), T(level=prop(0.1))),
    ('name>"M"', T(name=prop("Paris")), T(name=prop("Lyon"))),
    ('quote=="say \\"hi\\" \\u00e9"', T(quote=prop('say "hi" é')), T(quote=prop("say hi é"))),
    (
        "gender==Male",
        T(gender=[{"type": "VocabProperty", "vocab": "Male"}]),
        T(gender=[{"type": "VocabProperty", "vocab": "Female"}]),
    ),
    (
        "dateObserved>2020-01-01T00:00:00Z",
        T(dateObserved=prop({"@type": "DateTime", "@value": "2020-03-01T00:00:00Z"})),
        T(dateObserved=prop({"@type": "DateTime", "@value": "2019-03-01T00:00:00Z"})),
    ),
    (
        'dateObserved>"2020-01-01T01:00:00+02:00"',
        T(dateObserved=prop("2019-12-31T23:30:00Z")),
        T(dateObserved=prop("2019-12-31T22:30:00Z")),
    ),
    (
        "dateObserved>=2020-03-01",
        T(dateObserved=prop("2020-03-01T10:00:00Z")),
        T(dateObserved=prop("2020-02-29T23:00:00Z")),
    ),
    (
        "dateObserved==2020-03-01",
        T(dateObserved=prop("2020-03-01")),
        T(dateObserved=prop("2020-03-02")),
    ),
    (
        "dateObserved<2020-03-01",
        T(dateObserved=prop("2020-02-01")),
        T(dateObserved=prop("not a date")),
    ),
    ("opens<08:30:00", T(opens=prop("07:00:00")), T(opens=prop("09:00:00"))),
    ("opens<08:30:00Z", T(opens=prop("08:29:59.5")), T(opens=prop("08:30:00"))),
    # regular expressions
    ('name~="(?i)ma.*"', T(name=prop("MADRID")), T(name=prop("Paris"))),
    ("name~=(?i)^ma", T(name=prop("Marseille")), T(name=prop("Roma"))),
    ("name~=^(Ma|Li)", T(name=prop("Lille")), T(name=prop("Paris"))),
    (
        "(name~=ille$);level>1",
        T(name=prop("Lille"), level=prop(2)),
        T(name=prop("Lille"), level=prop(1)),
    ),
    ('name!~="^Ma"', T(name=prop("Paris")), T(name=prop("Madrid"))),
    ('name!~="^Ma"', T(name=prop("Paris")), T(name=prop(12))),
    ('name~="\\d{5}"', T(name=prop("75001 Paris")), T(name=prop("Paris"))),
    ('name~="say \\"hi"', T(name=prop('I say "hi"')), T(name=prop("I say hi"))),
    ("tags~=^a", T(tags=prop(["x", "ab"])), T(tags=prop(["x", 1]))),
    ("name~=^[[:upper:]][[:lower:]]+$", T(name=prop("Paris")), T(name=prop("paris"))),
    ("code~=^[^[:digit:][:space:]]+$", T(code=prop("AB-C")), T(code=prop("AB C"))),
    ("name~=[[:punct:]]", T(name=prop("a`b")), T(name=prop("ab"))),
    ("name~=[|;)]", T(name=prop("a;b")), T(name=prop("ab"))),
    # sub-attributes and NGSI-LD members
    (
        "temperature.accuracy<0.5",
        T(temperature=prop(20, accuracy={"type": "Property", "value": 0.2})),
        T(temperature=prop(20, accuracy={"type": "Property", "value": 0.7})),
    ),
    (
        "temperature.accuracy",
        T(temperature=prop(20, accuracy={"type": "Property", "value": 0.2})),
        T(temperature=prop(20)),
    ),
    (
        "isParked.providedBy==urn:ngsi-ld:Person:Bob",
        T(
            isParked=rel(
                PARKING, providedBy={"type": "Relationship", "object": "urn:ngsi-ld:Person:Bob"}
            )
        ),
        T(
            isParked=rel(
                PARKING, providedBy={"type": "Relationship", "object": "urn:ngsi-ld:Person:Al"}
            )
        ),
    ),
    (
        'temperature.unitCode=="CEL"',
        T(temperature=prop(20, unitCode="CEL")),
        T(temperature=prop(20, unitCode="FAH")),
    ),
    (
        "isParked.observedAt<2018-01-01T00:00:00Z",
        T(isParked=rel(PARKING, observedAt="2017-07-29T12:00:04Z")),
        T(isParked=rel(PARKING, observedAt="2018-07-29T12:00:04Z")),
    ),
    (
        "sensor.rawdata[airquality.particulate]==40",
        T(
            sensor=prop(
                40, rawdata={"type": "Property", "value": {"airquality": {"particulate": 40}}}
            )
        ),
        T(
            sensor=prop(
                40, rawdata={"type": "Property", "value": {"airquality": {"particulate": 41}}}
            )
        ),
    ),
    ("a[b][c]==1", T(a=prop({"b": {"c": 1}})), T(a=prop({"b": {"d": 1}}))),
    (
        'items[name]=="x"',
        T(items=prop([{"name": "y"}, {"name": "x"}])),
        T(items=prop([{"name": "y"}])),
    ),
    (
        'location[type]=="Point"',
        T(
            location=[
                {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [2.3, 48.8]}}
            ]
        ),
        T(location=[{"type": "GeoProperty", "value": {"type": "Polygon", "coordinates": []}}]),
    ),
    # several instances (one per datasetId)
    (
        "temperature>30",
        T(
            temperature=[
                {"type": "Property", "value": 20},
                {"type": "Property", "value": 35, "datasetId": "urn:ngsi-ld:Dataset:b"},
            ]
        ),
        T(
            temperature=[
                {"type": "Property", "value": 20},
                {"type": "Property", "value": 25, "datasetId": "urn:ngsi-ld:Dataset:b"},
            ]
        ),
    ),
    (
        "temperature.datasetId==urn:ngsi-ld:Dataset:b",
        T(
            temperature=[
                {"type": "Property", "value": 20},
                {"type": "Property", "value": 35, "datasetId": "urn:ngsi-ld:Dataset:b"},
            ]
        ),
        T(temperature=[{"type": "Property", "value": 20}]),
    ),
    (
        "temperature!=20",
        T(
            temperature=[
                {"type": "Property", "value": 20},
                {"type": "Property", "value": 35, "datasetId": "urn:ngsi-ld:Dataset:b"},
            ]
        ),
        T(temperature=[{"type": "Property", "value": 20}]),
    ),
    # the other attribute kinds
    (
        "readings>30",
        T(readings=[{"type": "ListProperty", "valueList": [10, 40]}]),
        T(readings=[{"type": "ListProperty", "valueList": [10, 20]}]),
    ),
    (
        "stops==urn:ngsi-ld:Stop:2",
        T(
            stops=[
                {
                    "type": "ListRelationship",
                    "objectList": [
                        {"object": "urn:ngsi-ld:Stop:1"},
                        {"object": "urn:ngsi-ld:Stop:2"},
                    ],
                }
            ]
        ),
        T(stops=[{"type": "ListRelationship", "objectList": [{"object": "urn:ngsi-ld:Stop:1"}]}]),
    ),
    (
        "friends==urn:ngsi-ld:P:2",
        T(friends=rel(["urn:ngsi-ld:P:1", "urn:ngsi-ld:P:2"])),
        T(friends=rel(["urn:ngsi-ld:P:1"])),
    ),
    (
        'street=="Grote Markt"',
        T(street=language(fr="Grand-Place", nl="Grote Markt")),
        T(street=language(fr="Grote Markt ", nl="x")),
    ),
    (
        'street[nl]=="Grote Markt"',
        T(street=language(fr="Grand-Place", nl="Grote Markt")),
        T(street=language(fr="Grote Markt", nl="x")),
    ),
    (
        'street[*]=="Grote Markt"',
        T(street=language(fr="Grand-Place", nl="Grote Markt")),
        T(street=language(fr="Grand-Place")),
    ),
    (
        'color[en]=="red"',
        T(color=language(fr=["chat", "rouge"], en=["red", "cat"])),
        T(color=language(fr="red", en="black")),
    ),
    (
        'color[en]!="red"',
        T(color=language(fr="rouge", en="black")),
        T(color=language(fr="rouge", en="red")),
    ),
    ("street[nl]", T(street=language(nl="x")), T(street=language(fr="x"))),
    (
        'parkingTickets[value]=="Overstay 60 minutes"',
        T(
            parkingTickets=[
                {"type": "JsonProperty", "json": {"id": "85a6", "value": "Overstay 60 minutes"}}
            ]
        ),
        T(parkingTickets=[{"type": "JsonProperty", "json": {"value": "Overstay 30 minutes"}}]),
    ),
    (
        "category==https://example.org/Park",
        T(
            category=[
                {
                    "type": "VocabProperty",
                    "vocab": ["https://example.org/Park", "https://example.org/Garden"],
                }
            ]
        ),
        T(category=[{"type": "VocabProperty", "vocab": "https://example.org/Garden"}]),
    ),
    # names: compact and full IRIs; blanks between tokens
    ('schema:name=="x"', T(**{"schema:name": prop("x")}), T(**{"schema:name": prop("y")})),
    ("ngsi-ld:level>1", T(**{"ngsi-ld:level": prop(2)}), T(**{"ngsi-ld:level": prop(1)})),
    (
        "https://example.org/a.b>1",
        T(**{"https://example.org/a.b": prop(2)}),
        T(**{"https://example.org/a": prop(2)}),
    ),
    (
        "https://example.org/address[city]==Lyon",
        T(**{"https://example.org/address": prop({"city": "Lyon"})}),
        T(**{"https://example.org/address": prop({"city": "Nice"})}),
    ),
    (
        "temperature > 20 ; ( humidity < 80 | wind )",
        T(temperature=prop(25), wind=prop(1)),
        T(temperature=prop(25), humidity=prop(90)),
    ),
    ("température>20", T(température=prop(25)), T(temperature=prop(25))),
]


@pytest.mark.parametrize(("q", "matching", "other"), CASES)
def test_query_matches_one_entity_and_not_the_other(q, matching, other):
    query = parse_q(q)
    assert matches(query, matching)
    assert not matches(query, other)


@pytest.mark.parametrize(
    "q",
    [
        "isParked>urn:a",
        "isParked<=urn:z",
        "isParked~=Downtown",
        "isParked!~=Uptown",
        "isParked[x]",
    ],
)
def test_relationships_only_match_equality(q):
    assert not matches(parse_q(q), entity(isParked=rel(PARKING)))


def test_type_mismatch_never_matches_except_unequal():
    thing = entity(temperature=prop(20), name=prop("Paris"), address=prop({"city": "Lyon"}))
    for q in ['temperature=="20"', "temperature>abc", "name>1", "name==true", "address==1"]:
        assert not matches(parse_q(q), thing), q
    for q in ['temperature!="20"', "name!=1", 'address!="Lyon"']:
        assert matches(parse_q(q), thing), q


def test_missing_attribute_matches_no_operator():
    for q in ["temperature!=20", "temperature!~=x", "temperature.observedAt!=2020-01-01"]:
        assert not matches(parse_q(q), entity()), q


def test_malformed_entities_do_not_raise():
    odd = entity(
        a="not a list",
        b=[1, "x", None, {"type": "Property"}],
        c=[{"type": "Property", "value": None}],
        d={"type": "Property", "value": 3},
        e=[{"type": "LanguageProperty", "languageMap": "fr"}],
        f=[{"type": "ListRelationship", "objectList": "urn:x:1"}],
    )
    for q in ["a", "b", "b==1", "c", "c!=1", "a[x]==1", "e", "e[fr]"]:
        assert not matches(parse_q(q), odd), q
    for q in ["d==3", "f==urn:x:1"]:
        assert matches(parse_q(q), odd), q


# ------------------------------------------------------------------------------- AST


def term(name, op=None, value=None, sub=None, members=()):
    return Term(AttributePath(name, sub, members), op, value)


@pytest.mark.parametrize(
    ("q", "tree"),
    [
        ("a", term("a")),
        ("(a)", term("a")),
        ("a;b|c", Or((And((term("a"), term("b"))), term("c")))),
        ("a|b;c", Or((term("a"), And((term("b"), term("c")))))),
        ("a;(b|c)", And((term("a"), Or((term("b"), term("c")))))),
        ("a;b;(c;d)", And((term("a"), term("b"), term("c"), term("d")))),
        ("a|(b|c)|d", Or((term("a"), term("b"), term("c"), term("d")))),
        ("t.observedAt", term("t", sub="observedAt")),
        ("t.accuracy>0.5", term("t", ">", 0.5, sub="accuracy")),
        ("a.b[c.d][e]==1", term("a", "==", 1, sub="b", members=("c", "d", "e"))),
        ("a==20..25", term("a", "==", Range(20, 25))),
        ('a=="x",2,true', term("a", "==", ("x", 2, True))),
        ("a!=urn:ngsi-ld:X:1", term("a", "!=", "urn:ngsi-ld:X:1")),
        ("a>=-1.5E+3", term("a", ">=", -1500.0)),
        ("a<2018-12-04T12:00:00Z", term("a", "<", datetime(2018, 12, 4, 12, tzinfo=UTC))),
        (
            "a<2018-12-04T12:00:00.123456789Z",
            term("a", "<", datetime(2018, 12, 4, 12, 0, 0, 123456, tzinfo=UTC)),
        ),
        ("a>2018-12-04", term("a", ">", date(2018, 12, 4))),
        ("a>12:30:00Z", term("a", ">", time(12, 30))),
        ("a>12:30:00+02:00", term("a", ">", time(10, 30))),
        ("a==2018-13-45", term("a", "==", "2018-13-45")),
        ("a==null", term("a", "==", "null")),
        ("a==false", term("a", "==", False)),
        ('a==""', term("a", "==", "")),
    ],
)
def test_parse_tree(q, tree):
    assert parse_q(q) == tree


def test_pattern_terms_hold_compiled_patterns():
    parsed = parse_q('name~="(?i)ma.*"')
    assert isinstance(parsed, Term)
    assert parsed.op == "~="
    assert parsed.value == compile_regex("(?i)ma.*")
    assert parse_q("name!~=a(b|c)").value.pattern == "a(b|c)"
    tree = parse_q("(name~=a(b|c));x")
    assert tree == And((term("name", "~=", compile_regex("a(b|c)")), term("x")))


def test_bind_expands_names_but_not_members_or_keywords():
    context = term_map(
        {
            "temperature": "https://example.org/temperature",
            "accuracy": "https://example.org/accuracy",
            "address": "https://schema.org/address",
        }
    )
    query = parse_q(
        "temperature.accuracy<0.5;temperature.observedAt>2020-01-01T00:00:00Z"
        '|address[addressLocality]=="Berlin";other'
    )
    bound = bind(query, context.expand)
    paths = [
        AttributePath("https://example.org/temperature", "https://example.org/accuracy"),
        AttributePath("https://example.org/temperature", "observedAt"),
        AttributePath("https://schema.org/address", None, ("addressLocality",)),
        AttributePath("https://uri.etsi.org/ngsi-ld/default-context/other"),
    ]
    assert [t.path for t in _terms(bound)] == paths
    assert attribute_names(bound) == {
        "https://example.org/temperature",
        "https://schema.org/address",
        "https://uri.etsi.org/ngsi-ld/default-context/other",
    }
    document = entity(
        **{
            "https://example.org/temperature": prop(
                20,
                observedAt="2021-01-01T00:00:00Z",
                **{"https://example.org/accuracy": {"type": "Property", "value": 0.1}},
            )
        }
    )
    assert matches(bound, document)
    assert not matches(query, document)


def test_bind_expands_vocab_values_for_vocab_properties():
    context = term_map(
        {"gender": "https://example.org/gender", "Male": "https://example.org/Male"}
    ).expand
    person = entity(
        **{
            "https://example.org/gender": [
                {"type": "VocabProperty", "vocab": "https://example.org/Male"}
            ]
        }
    )
    for q in ["gender==Male", 'gender=="Male"', "gender==Female,Male", "gender!=Female"]:
        assert matches(bind(parse_q(q), context), person), q
    for q in ["gender==Female", "gender!=Male", "gender~=^Male"]:
        assert not matches(bind(parse_q(q), context), person), q
    assert not matches(parse_q("https://example.org/gender==Male"), person)
    bound = bind(parse_q("gender==Male"), context)
    assert bound.value == "Male"
    assert bound.vocab_value == "https://example.org/Male"
    assert bind(parse_q("gender>1"), context).vocab_value is None


def _terms(tree):
    if isinstance(tree, Term):
        return [tree]
    return [t for child in tree.children for t in _terms(child)]


def test_attribute_names_of_unbound_query():
    assert attribute_names(parse_q("a>1;(b.c|d[e]);a<3")) == {"a", "b", "d"}


# ------------------------------------------------------------------------ syntax errors


@pytest.mark.parametrize(
    ("q", "position", "fragment"),
    [
        ("", 0, "empty query"),
        ("   ", 3, "empty query"),
        ("a=1", 1, "'=='"),
        ("a==", 3, "expected a value"),
        ("a>", 2, "expected a value"),
        ("(a", 2, "expected ')'"),
        ("a)", 1, "unexpected ')'"),
        ("a;", 2, "expected an attribute name"),
        ("|a", 0, "expected an attribute name"),
        ("a;;b", 2, "expected an attribute name"),
        ("()", 1, "expected an attribute name"),
        ("1a==1", 0, "expected an attribute name"),
        ("a b", 2, "expected an operator"),
        ("a==1 2", 5, "unexpected '2'"),
        ("a.b.c==1", 0, "one level of sub-attribute"),
        ("a.==1", 2, "expected an attribute name"),
        ("a[b==1", 3, "expected ']'"),
        ("a[]==1", 2, "expected a member name"),
        ("a.observedAt[x]", 0, "no members"),
        ("a{b}==1", 1, "linked-entity"),
        ("a=!1", 1, "'=='"),
        ("a!1", 1, "unknown operator"),
        ("a~1", 1, "unknown operator"),
        ("a>true", 6, "booleans"),
        ("a>1,2", 3, "value lists"),
        ("a<1..2", 3, "ranges"),
        ("a==1..x", 4, "range bounds"),
        ("a==true..false", 7, "range bounds"),
        ("a==1..", 6, "expected a value"),
        ('a=="x', 3, "unterminated string"),
        ('a=="\\q"', 3, "invalid string"),
        ("a~=", 3, "empty regular expression"),
        ("a~=(", 3, "invalid regular expression"),
        ('a~="x', 3, "unterminated string"),
        ("a~=(x)\\1", 3, "invalid escape sequence"),
        ("a~=(?=x)", 3, "invalid perl operator"),
        ("a~=" + "x" * 300, 3, "longer than 256"),
        ("a~=[[:foo:]]", 3, "invalid character class range: [:foo:]"),
        ("a~=[z-a]", 3, "invalid character class range"),
        ("schema:==1", 0, "incomplete compact IRI"),
        ("https://==1", 8, "incomplete IRI"),
        ("a==(1)", 3, "expected a value"),
    ],
)
def test_syntax_errors_name_the_position(q, position, fragment):
    with pytest.raises(QuerySyntaxError) as caught:
        parse_q(q)
    assert caught.value.position == position
    assert fragment in caught.value.reason
    assert str(caught.value).startswith(f"invalid query at position {position}: ")


def test_limits():
    parse_q("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH)
    with pytest.raises(QuerySyntaxError, match="nested deeper"):
        parse_q("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(QuerySyntaxError, match="nested deeper"):
        parse_q("(" * (MAX_LENGTH - 1))
    parse_q(";".join(["a"] * (MAX_LENGTH // 2)))
    with pytest.raises(QuerySyntaxError, match="longer than 4096"):
        parse_q("a" * (MAX_LENGTH + 1))


def test_safe_patterns_are_accepted():
    for q in [
        "a~=^(ab|cd)x+",
        "a~=(ab)?c+",
        "a~=[+*|]+",
        "a~=\\(a+\\)+",
        "a~=(?:x{2,3})+",
        "a~=(a|b){3}",
    ]:
        parse_q(q)


# ------------------------------------------------------------------------------ scopes


@pytest.mark.parametrize(
    ("q", "tree"),
    [
        ("/Madrid", ScopePattern(("Madrid",))),
        ("/#", ScopePattern((), descendants=True)),
        ("/Madrid/Gardens/#", ScopePattern(("Madrid", "Gardens"), descendants=True)),
        ("/Madrid/+/ParqueNorte", ScopePattern(("Madrid", "+", "ParqueNorte"))),
        (
            "(/Madrid/Districts;/CompanyA)|/CompanyB",
            Or(
                (
                    And((ScopePattern(("Madrid", "Districts")), ScopePattern(("CompanyA",)))),
                    ScopePattern(("CompanyB",)),
                )
            ),
        ),
        ("/A,/B", Or((ScopePattern(("A",)), ScopePattern(("B",))))),
    ],
)
def test_parse_scope_q(q, tree):
    assert parse_scope_q(q) == tree


@pytest.mark.parametrize(
    ("q", "scopes", "expected"),
    [
        ("/Madrid", ["/Madrid"], True),
        ("/Madrid", ["/Madrid/Gardens"], False),
        ("/Madrid/Gardens/#", "/Madrid/Gardens", True),
        ("/Madrid/Gardens/#", ["/Madrid/Gardens/ParqueNorte/Parterre1"], True),
        ("/Madrid/Gardens/#", ["/Madrid/Districts"], False),
        ("/Madrid/Gardens/#", ["/Madrid"], False),
        ("/Madrid/+/ParqueNorte", ["/Madrid/Sights/ParqueNorte"], True),
        ("/Madrid/+/ParqueNorte", ["/Madrid/ParqueNorte"], False),
        ("/#", ["/Anything/Below"], True),
        ("/#", [], False),
        ("/#", None, False),
        ("/#", ["not a scope", "/", "//x"], False),
        ("(/Madrid/Districts;/CompanyA)", ["/CompanyA", "/Madrid/Districts"], True),
        ("(/Madrid/Districts;/CompanyA)", ["/Madrid/Districts"], False),
        ("(/Madrid/Districts;/CompanyA),/CompanyB", ["/CompanyB"], True),
    ],
)
def test_scope_matches(q, scopes, expected):
    assert scope_matches(parse_scope_q(q), scopes) is expected


@pytest.mark.parametrize(
    "q", ["", "Madrid", "/", "/Madrid/", "/Madrid/#/x", "/Ma drid", "(/a", "/a;"]
)
def test_scope_syntax_errors(q):
    with pytest.raises(QuerySyntaxError):
        parse_scope_q(q)


# ---------------------------------------------------------------------------- fuzzing

SAMPLES = [
    entity(),
    entity(
        a=prop(5, observedAt="2020-01-01T00:00:00Z", b={"type": "Property", "value": "x"}),
        temperature=[
            {"type": "Property", "value": [1, "two", None, {"k": 3}]},
            {
                "type": "Property",
                "value": {"@value": "2020-01-01", "@type": "Date"},
                "datasetId": "urn:x",
            },
        ],
        b=rel(["urn:a:1", "urn:a:2"], observedAt="not a date"),
        c=language(fr="chat", en=["cat", "kitty"]),
        d=[{"type": "JsonProperty", "json": {"x": [1, {"y": True}]}}],
        e=[{"type": "ListRelationship", "objectList": [{"object": "urn:a:1"}, "urn:a:2", 3]}],
        f=prop("12:00:00Z"),
        g=prop(1e308),
        h="garbage",
    ),
]

TOKENS = list(';|()[]{}.=!<>~,"\\ *+#/:-_') + [
    "a",
    "b",
    "temperature",
    "observedAt",
    "é",
    "1",
    "2.5",
    "-3",
    "e5",
    "..",
    "==",
    "!=",
    "~=",
    "!~=",
    ">=",
    "true",
    "false",
    "urn:a:1",
    "https://",
    "2018-12-04T12:00:00Z",
    "2018-12-04",
    "12:00:00",
    "(?i)",
    "\\d",
    '"x"',
]
grammar_noise = st.lists(st.sampled_from(TOKENS), max_size=30).map("".join)

short_names = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "temperature"])
brackets = st.sampled_from(["", "[x]", "[x.y]", "[fr]", "[*]", "[x][y]"])
paths = st.one_of(
    st.tuples(short_names, st.sampled_from(["", ".b", ".accuracy"]), brackets).map("".join),
    st.tuples(short_names, st.sampled_from([".observedAt", ".unitCode", ".datasetId"])).map(
        "".join
    ),
    st.tuples(st.just("https://x.org/a.b"), brackets).map("".join),
)
scalars = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=8).map(
        lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
    st.sampled_from(["2018-12-04T12:00:00Z", "2018-12-04", "12:00:00", "urn:a:1", "word"]),
)
comparisons = st.tuples(st.sampled_from([">", ">=", "<", "<="]), scalars).map("".join)
equalities = st.tuples(
    st.sampled_from(["==", "!="]),
    st.one_of(
        scalars,
        st.sampled_from(["true", "false"]),
        st.lists(scalars, min_size=2, max_size=4).map(",".join),
        st.integers(-9, 9).map(lambda n: f"{n}..{n + 3}"),
    ),
).map("".join)
patterns = st.tuples(
    st.sampled_from(["~=", "!~="]), st.sampled_from(["^a", "(?i)X", '"t.*"', "[0-9]+"])
).map("".join)
valid_terms = st.tuples(paths, st.one_of(st.just(""), comparisons, equalities, patterns)).map(
    "".join
)
valid_queries = st.recursive(
    valid_terms,
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(";".join),
        st.lists(inner, min_size=2, max_size=3).map("|".join),
        inner.map(lambda q: f"({q})"),
    ),
    max_leaves=8,
)


def parse_or_reject(text):
    try:
        return parse_q(text)
    except QuerySyntaxError:
        return None


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_any_text_parses_or_is_rejected(text):
    query = parse_or_reject(text)
    if query is not None:
        for sample in SAMPLES:
            matches(query, sample)


@settings(max_examples=500, deadline=None)
@given(grammar_noise)
def test_token_soup_parses_or_is_rejected(text):
    query = parse_or_reject(text)
    if query is not None:
        assert attribute_names(query)
        for sample in SAMPLES:
            assert isinstance(matches(query, sample), bool)
        bind(query, lambda name: "https://example.org/" + name)


@settings(max_examples=500, deadline=None)
@given(valid_queries)
def test_grammatical_queries_parse_and_evaluate(text):
    query = parse_q(text)
    for sample in SAMPLES:
        assert isinstance(matches(query, sample), bool)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.text(), st.lists(st.sampled_from(list("/#+;|,()ab ")), max_size=20).map("".join))
)
def test_any_scope_text_parses_or_is_rejected(text):
    try:
        query = parse_scope_q(text)
    except QuerySyntaxError:
        return
    assert isinstance(scope_matches(query, ["/a/b", "/b"]), bool)


def test_existence_of_an_attribute_whose_value_is_an_empty_array():
    entity = {
        "id": "urn:x:1",
        "type": ["T"],
        "https://e.org/permit": [{"type": "Property", "value": []}],
    }
    assert matches(bind(parse_q("permit"), lambda name: f"https://e.org/{name}"), entity)


@pytest.mark.parametrize(
    ("pattern", "matching", "hostile"),
    [
        ("^(a+)+$", "aaa", "a" * 100_000 + "!"),
        ("^(a|a)*b$", "aab", "a" * 100_000 + "!"),
        ("^(x*y)*$", "xyxxy", "x" * 100_000 + "!"),
        ("^((ab)+c)*$", "ababc", "ab" * 50_000 + "!"),
        ("^(a|aa)+$", "aaaa", "a" * 100_000 + "!"),
    ],
)
def test_patterns_that_backtrack_exponentially_run_in_linear_time(pattern, matching, hostile):
    """Accepted and answered at once, where a backtracking engine would take years."""
    query = parse_q(f"name~={pattern}")
    assert matches(query, entity(name=prop(matching)))
    assert not matches(query, entity(name=prop(hostile)))
