"""Our term maps against a real JSON-LD processor (pyld, tests only), offline."""

import copy
import json
from pathlib import Path

import pytest
from pyld import jsonld

from communs.hub import context as ld
from communs.hub.core_context import DEFAULT_VOCAB, NGSI_LD

CONFORMANCE = Path(__file__).resolve().parents[3] / "shared" / "conformance"
CORE_FILE = CONFORMANCE / "ngsi-ld" / "ngsi-ld-core-context-v1.9.jsonld"
CORE_URL = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.9.jsonld"
USER_URL = "https://example.org/contexts/city.jsonld"
USER_CONTEXT = {
    "@context": {
        "schema": "https://schema.org/",
        "sdm": "https://smartdatamodels.org/dataModel.Streetlight/",
        "name": "schema:name",
        "Streetlight": "sdm:Streetlight",
        "status": {"@id": "sdm:status", "@type": "@vocab"},
        "powerState": "sdm:powerState",
        "lanternHeight": "https://smartdatamodels.org/dataModel.Streetlight/lanternHeight",
    }
}


def core_document() -> dict:
    if not CORE_FILE.exists():
        pytest.skip("../shared/conformance is absent: conformance tests run in CI")
    return json.loads(CORE_FILE.read_text())


def offline_loader(url, options=None):
    documents = {
        CORE_URL: core_document(),
        USER_URL: USER_CONTEXT,
        # Scoped context of the core's "ngsildproof" term; its terms play no part here.
        "https://w3id.org/security/data-integrity/v2": {"@context": {}},
    }
    if url not in documents:
        raise jsonld.JsonLdError(
            "offline", "loading document failed", code="loading document failed"
        )
    return {"contextUrl": None, "documentUrl": url, "document": copy.deepcopy(documents[url])}


def pyld_expand_keys(keys: list[str], user_context) -> dict[str, str]:
    context = [*([user_context] if user_context else []), CORE_URL]
    result = {}
    for key in keys:
        single = jsonld.expand(
            {"@context": context, "@id": "urn:x", key: {"@id": "urn:v"}},
            {"documentLoader": offline_loader},
        )[0]
        result[key] = next(iri for iri in single if not iri.startswith("@"))
    return result


def sdm_attribute_names() -> list[str]:
    names = set()
    for example in (CONFORMANCE / "smart-data-models").glob("*/example-normalized.jsonld"):
        entity = json.loads(example.read_text())
        names.update(key for key in entity if key not in ("id", "type", "@context"))
    return sorted(names)


def test_core_only_expansion_matches_pyld_for_every_smart_data_model_attribute():
    names = sdm_attribute_names()
    assert len(names) > 40
    expected = pyld_expand_keys(names, None)
    active = ld.term_map(None)
    assert {name: active.expand(name) for name in names} == expected
    assert active.expand("location") == NGSI_LD + "location"
    assert active.expand("temperature") == DEFAULT_VOCAB + "temperature"


@pytest.mark.parametrize("user_context", [USER_URL, USER_CONTEXT["@context"]])
def test_user_context_expansion_matches_pyld(user_context):
    keys = [
        "name",
        "status",
        "powerState",
        "lanternHeight",
        "location",
        "observedAt",
        "schema:address",
        "sdm:circuit",
        "unknownThing",
        "https://example.org/full",
    ]
    expected = pyld_expand_keys(keys, user_context)
    loader = lambda url: USER_CONTEXT  # noqa: E731 - the context store stands here
    active = ld.term_map(user_context, loader)
    assert {key: active.expand(key) for key in keys} == expected


def test_compaction_matches_pyld():
    iris = [
        "https://schema.org/name",
        "https://smartdatamodels.org/dataModel.Streetlight/powerState",
        "https://smartdatamodels.org/dataModel.Streetlight/circuit",
        NGSI_LD + "location",
        DEFAULT_VOCAB + "temperature",
        "https://example.org/full",
    ]
    context = [USER_CONTEXT["@context"], CORE_URL]
    expanded = [{"@id": "urn:x", iri: [{"@id": "urn:v"}]} for iri in iris]
    active = ld.term_map(USER_CONTEXT["@context"])
    for iri, document in zip(iris, expanded, strict=True):
        compacted = jsonld.compact(
            document, {"@context": context}, {"documentLoader": offline_loader}
        )
        key = next(k for k in compacted if k not in ("@context", "id", "@id"))
        assert active.compact(iri) == key, iri
        assert active.expand(active.compact(iri)) == iri


def test_core_terms_cannot_be_redefined_and_core_urls_are_built_in():
    active = ld.term_map({"location": "https://evil.example/location"})
    assert active.expand("location") == NGSI_LD + "location"
    for version in range(3, 10):
        url = f"https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.{version}.jsonld"
        assert ld.term_map(url) is ld.term_map(None)
        assert ld.term_map([url]).expand("observedAt") == NGSI_LD + "observedAt"


def test_term_maps_are_cached_per_context():
    first = ld.term_map({"a": "https://example.org/a"})
    assert ld.term_map({"a": "https://example.org/a"}) is first


def test_unavailable_and_invalid_contexts():
    with pytest.raises(ld.ContextNotAvailable):
        ld.term_map("https://example.org/unknown.jsonld")
    with pytest.raises(ld.InvalidContext):
        ld.term_map(42)
    with pytest.raises(ld.InvalidContext):
        ld.term_map("not a url")
    with pytest.raises(ld.InvalidContext):
        ld.term_map({"a": "b:x", "b": "a:y"})
