"""The seven city Smart Data Models' normalized examples, through the hub and against pyld.

Acceptance: every normalized example of ``../shared/conformance/smart-data-models/``
round-trips (created, read back equal in normalized form, consistent in keyValues and
concise), and our expansion and compaction agree with pyld (tests only) on the shared
core context. Everything is offline: the examples' remote Smart Data Models @context
cannot be fetched, so each example is posted either without it (as application/json:
names expand to the NGSI-LD default vocabulary) or with an inline @context written
here, mapping a few of the model's terms to ``https://smartdatamodels.org/…`` IRIs.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from ngsi_client import BASE
from pyld import jsonld

from communs.core import service as core_service
from communs.hub import service as hub_service
from communs.hub.context import CORE_CONTEXT_URLS, term_map
from communs.hub.core_context import NGSI_LD
from communs.hub.document import MEMBERS, SYSTEM_MEMBERS, VALUE_KEY, attribute_iris

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance"
SDM = CONFORMANCE / "smart-data-models"
CORE_FILE = CONFORMANCE / "ngsi-ld" / "ngsi-ld-core-context-v1.9.jsonld"
CORE_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
# Where a GET finds a model's inline context (a Link header names a URL): the hub's
# context loader serves it there, as the context store will. One URL per model, since
# the hub caches the term map of a URL.
USER_URL = "https://example.org/contexts/{model}.jsonld"
LD_JSON = {"Content-Type": "application/ld+json"}
ATTRIBUTE_TYPES = {NGSI_LD + attribute_type for attribute_type in VALUE_KEY}


def sdm(domain: str, *terms: str) -> dict[str, Any]:
    """An inline @context mapping ``terms`` to IRIs of the model's domain."""
    return {term: f"https://smartdatamodels.org/dataModel.{domain}/{term}" for term in terms}


# model -> (inline @context, q finding the example, q missing it). The contexts map the
# type, some attributes and, where the example has one, a sub-attribute; "status" is
# also a core term, so the core definition (protected, applied last) must win.
MODELS: dict[str, tuple[dict[str, Any], str, str]] = {
    "Streetlight": (
        sdm(
            "Streetlighting",
            "Streetlight",
            "powerState",
            "lanternHeight",
            "circuit",
            "deviceInfo",
            "status",
        ),
        'powerState=="off";lanternHeight>=10',
        'powerState=="on"',
    ),
    "StreetlightControlCabinet": (
        sdm(
            "Streetlighting",
            "StreetlightControlCabinet",
            "energyConsumed",
            "intensityR",
            "refStreetlightGroup",
            "workingMode",
        ),
        "energyConsumed>162000;intensityR==20.1",
        "energyConsumed<162000",
    ),
    "ParkingSpot": (
        sdm("Parking", "ParkingSpot", "category", "refParkingSite", "parkingPermit", "status"),
        'name=="A-13";status=="free"',
        'status=="occupied"',
    ),
    "OffStreetParking": (
        sdm(
            "Parking",
            "OffStreetParking",
            "availableSpotNumber",
            "totalSpotNumber",
            "occupancy",
            "name",
        ),
        "availableSpotNumber<200;totalSpotNumber==414",
        "availableSpotNumber>200",
    ),
    "AirQualityObserved": (
        sdm(
            "Environment",
            "AirQualityObserved",
            "no2",
            "temperature",
            "airQualityLevel",
            "dateObserved",
        ),
        'no2>50;airQualityLevel=="moderate"',
        "no2<=50",
    ),
    "WaterConsumptionObserved": (
        sdm(
            "WaterConsumption",
            "WaterConsumptionObserved",
            "waterConsumption",
            "maxFlow",
            "observedBy",
        ),
        "waterConsumption==191051",
        "waterConsumption!=191051",
    ),
    "WasteContainer": (
        sdm("WasteManagement", "WasteContainer", "binCapacity", "RFID", "license_plate"),
        'binColor=="Green";binCapacity==43',
        'binColor=="Blue"',
    ),
}

pytestmark = pytest.mark.parametrize("model", list(MODELS))


# ---------------------------------------------------------------- helpers


def load_example(model: str) -> dict[str, Any]:
    """The model's normalized example with its (remote, unfetchable) @context removed."""
    path = SDM / model / "example-normalized.jsonld"
    if not path.exists():
        pytest.skip(f"{path} is absent: the Smart Data Models conformance tests run in CI")
    example = json.loads(path.read_text(encoding="utf-8"))
    example.pop("@context")
    return example


def core_document() -> dict[str, Any]:
    if not CORE_FILE.exists():
        pytest.skip(f"{CORE_FILE} is absent: the conformance tests run in CI")
    return json.loads(CORE_FILE.read_text(encoding="utf-8"))


def offline_loader(url, options=None):
    """pyld's document loader: the v1.9 core context for every core URL, nothing remote."""
    if url in CORE_CONTEXT_URLS:
        document = core_document()
    elif url == "https://w3id.org/security/data-integrity/v2":
        # Scoped context of the core's "ngsildproof" term; its terms play no part here.
        document = {"@context": {}}
    else:
        raise jsonld.JsonLdError(
            "offline", "loading document failed", code="loading document failed"
        )
    return {"contextUrl": None, "documentUrl": url, "document": document}


def context_for(model: str, inline: bool) -> list[Any]:
    return [MODELS[model][0], CORE_URL] if inline else [CORE_URL]


def commune_id(db) -> int:
    with db.read() as session:
        return core_service.commune_by_slug(session, "alpha").id


def stored(db, entity_id: str) -> dict[str, Any]:
    with db.read() as session:
        return hub_service.get_entity(session, commune_id(db), entity_id)


def path_of(example: dict[str, Any]) -> str:
    return f"/entities/{example['id']}"


def create(hub, example: dict[str, Any], model: str, inline: bool):
    if inline:
        body = {**example, "@context": context_for(model, inline=True)}
        response = hub.create(body, headers=LD_JSON)
    else:
        response = hub.create(example)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"{BASE}{path_of(example)}"
    return response


def serve_user_context(app, model: str) -> dict[str, str]:
    """Let the hub load the model's inline context from USER_URL; the Link header naming it."""
    url = USER_URL.format(model=model)
    documents = {url: {"@context": MODELS[model][0]}}
    app.state.hub_context_loader = lambda wanted: copy.deepcopy(documents[wanted])
    link = f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    return {"Link": link}


def expected_key_value(attribute: dict[str, Any]) -> Any:
    """The keyValues form of one normalized attribute, as communs.hub.document defines it."""
    attribute_type = attribute["type"]
    value = attribute[VALUE_KEY[attribute_type]]
    if attribute_type == "LanguageProperty":
        return {"languageMap": value}
    if attribute_type == "JsonProperty":
        return {"json": value}
    return value


def pyld_expand(example: dict[str, Any], context: list[Any]) -> dict[str, Any]:
    expanded = jsonld.expand(
        {**copy.deepcopy(example), "@context": context}, {"documentLoader": offline_loader}
    )
    assert len(expanded) == 1
    return expanded[0]


def pyld_attributes(node: dict[str, Any]) -> dict[str, set[str]]:
    """Attribute IRI -> IRIs of its sub-attributes, in a pyld-expanded entity or attribute.

    A sub-attribute is a member whose value is a node typed as an NGSI-LD attribute
    (Property, Relationship, ...); other members (hasValue, observedAt, unitCode...) are
    not attributes.
    """
    attributes = {}
    for iri, values in node.items():
        if iri.startswith("@") or not values:  # an empty "value": [] expands to []
            continue
        instance = values[0]
        if isinstance(instance, dict) and set(instance.get("@type", ())) & ATTRIBUTE_TYPES:
            attributes[iri] = set(pyld_attributes(instance))
    return attributes


def hub_attributes(document: dict[str, Any]) -> dict[str, set[str]]:
    """The same, for a document as the hub stores it."""
    return {
        iri: {key for key in instances[0] if key not in MEMBERS and key not in SYSTEM_MEMBERS}
        for iri, instances in ((iri, document[iri]) for iri in attribute_iris(document))
    }


def as_iris(attribute: dict[str, Any], inline: dict[str, str]) -> dict[str, Any]:
    """An attribute with the names its sub-attributes have in ``inline`` as IRIs."""
    renamed = {}
    for key, value in attribute.items():
        if key in MEMBERS:
            renamed[key] = value
        else:
            renamed[inline.get(key, key)] = as_iris(value, inline)
    return renamed


def names(entity: dict[str, Any]) -> dict[str, set[str]]:
    """Attribute name -> names of its sub-attributes, in a compacted normalized entity."""
    return {
        name: {
            key
            for key, value in attribute.items()
            if key not in MEMBERS and isinstance(value, dict) and "type" in value
        }
        for name, attribute in entity.items()
        if name not in ("@context", "id", "type")
    }


# ---------------------------------------------------------------- tests

# The round trips run twice: the example posted as application/json without @context
# (names in the default vocabulary), and as application/ld+json with the model's inline
# @context (the mapped names then stored as Smart Data Models IRIs, and read back with a
# Link to that context).
INLINE = pytest.mark.parametrize("inline", [False, True], ids=["core", "inline"])


def read(hub, app, example, model: str, inline: bool, **params):
    headers = serve_user_context(app, model) if inline else None
    response = hub.get(path_of(example), params=params or None, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


@INLINE
def test_normalized_round_trip(hub, app, model, inline):
    example = load_example(model)
    create(hub, example, model, inline)
    assert read(hub, app, example, model, inline) == example


def test_inline_context_names_are_stored_as_smart_data_models_iris(hub, db, model):
    example = load_example(model)
    create(hub, example, model, inline=True)
    inline = MODELS[model][0]
    document = stored(db, example["id"])
    assert document["type"] == [inline[model]]
    mapped = {name for name in inline if name in example} - {"status"}  # "status" is core
    assert mapped and {inline[name] for name in mapped} <= set(document)
    # Read without the user context, those names come back as IRIs.
    plain = hub.get(path_of(example)).json()
    assert plain["type"] == inline[model]
    for name in mapped:
        assert plain[inline[name]] == as_iris(example[name], inline) and name not in plain


@INLINE
def test_key_values_are_consistent_with_the_normalized_form(hub, app, model, inline):
    example = load_example(model)
    create(hub, example, model, inline)
    key_values = read(hub, app, example, model, inline, options="keyValues")
    expected = {
        name: expected_key_value(attribute)
        for name, attribute in example.items()
        if name not in ("id", "type")
    }
    assert key_values == {"id": example["id"], "type": example["type"], **expected}


@INLINE
def test_concise_round_trip(hub, app, model, inline):
    example = load_example(model)
    create(hub, example, model, inline)
    concise = read(hub, app, example, model, inline, format="concise")
    assert concise["id"] == example["id"] and concise["type"] == example["type"]
    # Concise indeed: no attribute keeps its "type" member (a GeoProperty becomes its
    # geometry, a Property without other members its bare value).
    attributes = [name for name in example if name not in ("id", "type")]
    assert set(concise) == set(example)
    assert all(concise[name] != example[name] for name in attributes)
    assert hub.request("DELETE", path_of(example)).status_code == 204
    assert hub.get(path_of(example)).status_code == 404
    create(hub, concise, model, inline)
    assert read(hub, app, example, model, inline) == example


def multi_instance_variant(example: dict[str, Any], model: str) -> dict[str, Any]:
    """The example with a second instance (a datasetId) of every attribute, and its
    location also held by a plain Property: forms that must survive a round trip too."""
    variant = {"id": example["id"], "type": example["type"]}
    for name, attribute in example.items():
        if name not in ("id", "type"):
            second = {**attribute, "datasetId": f"urn:ngsi-ld:Dataset:{model}:second"}
            variant[name] = [attribute, second]
    variant["locationAsProperty"] = {"type": "Property", "value": example["location"]["value"]}
    return variant


def test_multi_instance_variant_round_trips(hub, model):
    variant = multi_instance_variant(load_example(model), model)
    create(hub, variant, model, inline=False)
    path = path_of(variant)
    assert hub.get(path).json() == variant
    key_values = hub.get(path, params={"options": "keyValues"}).json()
    for name, instances in variant.items():
        if name not in ("id", "type"):
            default = instances[0] if isinstance(instances, list) else instances
            assert key_values[name] == expected_key_value(default), name
    concise = hub.get(path, params={"format": "concise"}).json()
    # Every instance of a multi-attribute is an object (a bare value would be ambiguous),
    # and a geometry held by a Property keeps its type (else it reads as a GeoProperty).
    assert all(
        isinstance(instance, dict)
        for name, instances in concise.items()
        if name not in ("id", "type")
        for instance in (instances if isinstance(instances, list) else [instances])
    )
    assert concise["locationAsProperty"]["type"] == "Property"
    assert hub.request("DELETE", path).status_code == 204
    assert hub.create(concise).status_code == 201
    assert hub.get(path).json() == variant


@INLINE
def test_expansion_and_compaction_agree_with_pyld(hub, app, db, model, inline):
    example = load_example(model)
    context = context_for(model, inline)
    create(hub, example, model, inline)
    expanded = pyld_expand(example, context)
    document = stored(db, example["id"])
    # Expansion: the entity's type IRIs, its attribute IRIs and their sub-attribute IRIs.
    assert expanded["@id"] == document["id"]
    assert expanded["@type"] == document["type"]
    assert pyld_attributes(expanded) == hub_attributes(document)
    terms = term_map(context[:-1] or None)
    assert expanded["@type"] == [terms.expand(example["type"])]
    attributes = [name for name in example if name not in ("id", "type")]
    assert set(pyld_attributes(expanded)) == {terms.expand(name) for name in attributes}
    # Compaction: pyld's names for the expanded entity are those of our normalized response.
    compacted = jsonld.compact(expanded, {"@context": context}, {"documentLoader": offline_loader})
    response = read(hub, app, example, model, inline)
    assert compacted["id"] == response["id"]
    assert compacted["type"] == response["type"] == example["type"]
    assert names(compacted) == names(response) == names(example)
    assert all(terms.compact(iri) in example for iri in attribute_iris(document))


@INLINE
def test_query_by_type_and_q(hub, app, model, inline):
    example = load_example(model)
    _context, q_match, q_miss = MODELS[model]
    create(hub, example, model, inline)
    other = {"id": f"urn:ngsi-ld:{model}:other", "type": model}
    create(hub, other, model, inline)
    # With the inline context, the type and the q names expand through the Link context.
    headers = serve_user_context(app, model) if inline else None

    def query(**params):
        response = hub.get("/entities", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    assert query(type=model) == [example, other]
    assert query(type=model, q=q_match) == [example]
    assert query(type=model, q=q_miss) == []
    assert query(q=q_match) == [example]
