"""Entities between the wire and the store.

Inside Communs an entity is one JSON document with expanded names:

    {"id": "urn:ngsi-ld:Streetlight:1", "type": ["https://…/Streetlight"],
     "scope": [...],                                   # only when given
     "createdAt": "…Z", "modifiedAt": "…Z",
     "<attribute IRI>": [<instance>, …]}               # one instance per datasetId

An instance is the normalized attribute with expanded sub-attribute names:
``{"type": "Property", "value": 21.5, "observedAt": "…", "unitCode": "CEL",
"datasetId": "urn:…", "createdAt": "…", "modifiedAt": "…", "<sub IRI>": {…}}``.
Relationships carry ``object``, LanguageProperty ``languageMap``, JsonProperty
``json``, VocabProperty ``vocab`` (expanded IRIs), ListProperty ``valueList`` and
ListRelationship ``objectList``. Requests may use the normalized or the concise
form; responses are normalized, concise or keyValues, compacted to the caller's
@context.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from communs.hub.context import TermMap, _is_absolute_iri
from communs.hub.errors import BadRequestData
from communs.hub.geoquery import GEOMETRY_TYPES, GeoQuerySyntaxError, validate_geometry

VALUE_KEY = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "LanguageProperty": "languageMap",
    "JsonProperty": "json",
    "VocabProperty": "vocab",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
}
CONCISE_KEYS = {key: type_ for type_, key in VALUE_KEY.items() if type_ != "GeoProperty"}
MEMBERS = {
    "type",
    "datasetId",
    "observedAt",
    "unitCode",
    "createdAt",
    "modifiedAt",
    "deletedAt",
    "lang",
    "objectType",
    "previousValue",
    *VALUE_KEY.values(),
}
SYSTEM_MEMBERS = ("createdAt", "modifiedAt", "deletedAt")
ENTITY_KEYS = {"id", "type", "scope", "@context", "createdAt", "modifiedAt", "deletedAt"}
NULL_URI = "urn:ngsi-ld:null"
FORBIDDEN_NAME_CHARS = set("<>\"'=;()")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_uri(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _is_absolute_iri(value) or len(value) > 256:
        raise BadRequestData(f"{what} must be a URI (at most 256 characters): {value!r}")
    return value


def check_datetime(value: Any, what: str) -> str:
    if isinstance(value, str):
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return value
        except ValueError:
            pass
    raise BadRequestData(f"{what} must be an ISO 8601 date-time: {value!r}")


_VALID_NAMES: set[str] = set()


def check_name(name: Any) -> str:
    if name in _VALID_NAMES:
        return name
    if not isinstance(name, str) or not name or FORBIDDEN_NAME_CHARS & set(name):
        raise BadRequestData(f"invalid attribute name: {name!r}")
    if len(_VALID_NAMES) < 65_536:
        _VALID_NAMES.add(name)
    return name


# ---------------------------------------------------------------- requests


def parse_types(raw: Any, terms: TermMap) -> list[str]:
    names = raw if isinstance(raw, list) else [raw]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise BadRequestData("type must be a non-empty string or list of strings")
    expanded = [terms.expand(check_name(name)) for name in names]
    return list(dict.fromkeys(expanded))


def parse_entity(payload: Any, terms: TermMap, *, require_type: bool = True) -> dict[str, Any]:
    """An entity fragment of a request, in the stored form (no system timestamps)."""
    if not isinstance(payload, dict):
        raise BadRequestData("an entity must be a JSON object")
    entity: dict[str, Any] = {"id": check_uri(payload.get("id"), "id")}
    if "type" in payload:
        entity["type"] = parse_types(payload["type"], terms)
    elif require_type:
        raise BadRequestData("an entity needs a type")
    if "scope" in payload:
        entity["scope"] = parse_scope(payload["scope"])
    entity.update(parse_attributes(payload, terms, allow_null=False))
    return entity


def parse_scope(raw: Any) -> list[str]:
    scopes = raw if isinstance(raw, list) else [raw]
    if not all(isinstance(s, str) and s.startswith("/") for s in scopes):
        raise BadRequestData("scope must be a path like /Nantes/Centre, or a list of them")
    return scopes


def parse_attributes(
    payload: dict[str, Any], terms: TermMap, *, allow_null: bool
) -> dict[str, list[dict[str, Any]] | None]:
    """Attributes of a request body; with ``allow_null``, null means "delete"."""
    attributes: dict[str, list[dict[str, Any]] | None] = {}
    for name, raw in payload.items():
        if name in ENTITY_KEYS:
            continue
        iri = terms.expand(check_name(name))
        if allow_null and (raw is None or raw == NULL_URI):
            attributes[iri] = None
            continue
        attributes[iri] = parse_attribute(name, raw, terms)
    return attributes


_PLAIN_PROPERTY_KEYS = frozenset({"type", "value", "unitCode", "observedAt"})
_SCALAR_TYPES = frozenset({int, float, str, bool})


def parse_attribute(name: str, raw: Any, terms: TermMap) -> list[dict[str, Any]]:
    """One attribute: one instance, or several with distinct datasetIds."""
    if (
        type(raw) is dict
        and raw.get("type") == "Property"
        and type(raw.get("value")) in _SCALAR_TYPES
        and raw.keys() <= _PLAIN_PROPERTY_KEYS
    ):
        return [_plain_property(name, raw)]
    if isinstance(raw, list) and raw and all(_is_attribute_object(item) for item in raw):
        instances = [parse_instance(name, item, terms) for item in raw]
    else:
        instances = [parse_instance(name, raw, terms)]
    dataset_ids = [instance.get("datasetId") for instance in instances]
    if len(set(dataset_ids)) != len(dataset_ids):
        raise BadRequestData(f"attribute {name!r} repeats a datasetId")
    return instances


def _plain_property(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The most common attribute, a Property with a scalar value, without the general
    walk; the result is what ``parse_instance`` gives."""
    instance = {"type": "Property", "value": raw["value"]}
    if "observedAt" in raw:
        instance["observedAt"] = check_datetime(raw["observedAt"], f"{name}.observedAt")
    if "unitCode" in raw:
        if not isinstance(raw["unitCode"], str):
            raise BadRequestData(f"{name}.unitCode must be a string")
        instance["unitCode"] = raw["unitCode"]
    return instance


def _is_attribute_object(value: Any) -> bool:
    return isinstance(value, dict) and (
        value.get("type") in VALUE_KEY or any(key in value for key in CONCISE_KEYS)
    )


def _is_geometry(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") in GEOMETRY_TYPES
        and ("coordinates" in value or "geometries" in value)
    )


def parse_instance(name: str, raw: Any, terms: TermMap, depth: int = 0) -> dict[str, Any]:
    if depth > 8:
        raise BadRequestData(f"attribute {name!r} nests sub-attributes too deeply")
    raw = _normalized(raw)
    attribute_type = raw["type"]
    value_key = VALUE_KEY[attribute_type]
    if value_key not in raw or raw[value_key] is None:
        raise BadRequestData(f"{attribute_type} {name!r} needs a non-null {value_key!r}")
    instance: dict[str, Any] = {"type": attribute_type}
    instance[value_key] = _parse_value(name, attribute_type, raw[value_key], terms)
    if "observedAt" in raw:
        instance["observedAt"] = check_datetime(raw["observedAt"], f"{name}.observedAt")
    if "datasetId" in raw:
        instance["datasetId"] = check_uri(raw["datasetId"], f"{name}.datasetId")
    if "unitCode" in raw:
        if not isinstance(raw["unitCode"], str):
            raise BadRequestData(f"{name}.unitCode must be a string")
        instance["unitCode"] = raw["unitCode"]
    if "objectType" in raw and attribute_type in ("Relationship", "ListRelationship"):
        instance["objectType"] = parse_types(raw["objectType"], terms)
    for sub_name, sub_raw in raw.items():
        if sub_name in MEMBERS or sub_name == "@context":
            continue
        sub_iri = terms.expand(check_name(sub_name))
        instance[sub_iri] = parse_instance(sub_name, sub_raw, terms, depth + 1)
    return instance


def _normalized(raw: Any) -> dict[str, Any]:
    """The normalized form of a normalized or concise attribute."""
    if isinstance(raw, dict):
        declared = raw.get("type")
        if declared in VALUE_KEY:
            return raw
        if _is_geometry(raw):
            return {"type": "GeoProperty", "value": raw}
        for key, attribute_type in CONCISE_KEYS.items():
            if key in raw:
                value = raw[key]
                if attribute_type == "Property" and _is_geometry(value):
                    attribute_type = "GeoProperty"
                return {**raw, "type": attribute_type}
        if declared is not None:
            raise BadRequestData(f"unknown attribute type {declared!r}")
    return {"type": "Property", "value": raw}


def _parse_value(name: str, attribute_type: str, value: Any, terms: TermMap) -> Any:
    if attribute_type == "GeoProperty":
        try:
            return validate_geometry(value)
        except GeoQuerySyntaxError as error:
            raise BadRequestData(f"GeoProperty {name!r}: {error}") from error
    if attribute_type == "Relationship":
        objects = value if isinstance(value, list) else [value]
        for item in objects:
            check_uri(item, f"{name}.object")
        return value
    if attribute_type == "LanguageProperty":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, list)) for k, v in value.items()
        ):
            raise BadRequestData(f"{name}.languageMap must map language tags to strings")
        return value
    if attribute_type == "VocabProperty":
        words = value if isinstance(value, list) else [value]
        if not all(isinstance(word, str) for word in words):
            raise BadRequestData(f"{name}.vocab must be a string or list of strings")
        expanded = [terms.expand(word) for word in words]
        return expanded if isinstance(value, list) else expanded[0]
    if attribute_type == "ListProperty" and not isinstance(value, list):
        raise BadRequestData(f"{name}.valueList must be an array")
    if attribute_type == "ListRelationship":
        if not isinstance(value, list):
            raise BadRequestData(f"{name}.objectList must be an array")
        for item in value:
            check_uri(item.get("object") if isinstance(item, dict) else item, f"{name}.objectList")
    return value


def stamp(instance: dict[str, Any], now: str, created: str | None = None) -> dict[str, Any]:
    """Set system timestamps on an instance and its sub-attributes."""
    instance["createdAt"] = created or now
    instance["modifiedAt"] = now
    for key, value in instance.items():
        if isinstance(value, dict) and key not in MEMBERS and "type" in value:
            stamp(value, now, value.get("createdAt"))
    return instance


def attribute_iris(entity: dict[str, Any]) -> Iterable[str]:
    return (key for key in entity if key not in ENTITY_KEYS)


# ---------------------------------------------------------------- responses


def render_entity(
    entity: dict[str, Any],
    terms: TermMap,
    *,
    form: str = "normalized",
    sys_attrs: bool = False,
    attrs: set[str] | None = None,
    lang: str | None = None,
) -> dict[str, Any]:
    types = [terms.compact(iri) for iri in entity["type"]]
    out: dict[str, Any] = {"id": entity["id"], "type": types[0] if len(types) == 1 else types}
    if "scope" in entity:
        out["scope"] = entity["scope"] if len(entity["scope"]) > 1 else entity["scope"][0]
    if sys_attrs and form != "keyValues":
        out["createdAt"] = entity.get("createdAt")
        out["modifiedAt"] = entity.get("modifiedAt")
    for iri in attribute_iris(entity):
        if attrs is not None and iri not in attrs:
            continue
        instances = entity[iri]
        name = terms.compact(iri)
        if form == "keyValues":
            out[name] = _key_value(_default_instance(instances), terms, lang)
            continue
        # In a list of instances a bare concise value would be read back as one Property
        # whose value is that list: each instance of a multi-attribute stays an object.
        alone = len(instances) == 1
        rendered = [_render_instance(i, terms, form, sys_attrs, lang, alone) for i in instances]
        out[name] = rendered[0] if alone else rendered
    return out


def _default_instance(instances: list[dict[str, Any]]) -> dict[str, Any]:
    return next((i for i in instances if "datasetId" not in i), instances[0])


def _key_value(instance: dict[str, Any], terms: TermMap, lang: str | None) -> Any:
    attribute_type = instance["type"]
    value = instance[VALUE_KEY[attribute_type]]
    if attribute_type == "LanguageProperty":
        return _pick_language(value, lang) if lang else {"languageMap": value}
    if attribute_type == "VocabProperty":
        return _compact_vocab(value, terms)
    if attribute_type == "JsonProperty":
        return {"json": value}
    return value


def _pick_language(language_map: dict[str, Any], lang: str) -> Any:
    for wanted in [part.strip().split(";")[0] for part in lang.split(",")]:
        if wanted == "*" and language_map:
            return next(iter(language_map.values()))
        if wanted in language_map:
            return language_map[wanted]
    return language_map.get("@none", next(iter(language_map.values()), None))


def _compact_vocab(value: Any, terms: TermMap) -> Any:
    if isinstance(value, list):
        return [terms.compact(item) for item in value]
    return terms.compact(value)


def _render_instance(
    instance: dict[str, Any],
    terms: TermMap,
    form: str,
    sys_attrs: bool,
    lang: str | None,
    bare_allowed: bool = True,
) -> Any:
    attribute_type = instance["type"]
    value_key = VALUE_KEY[attribute_type]
    out: dict[str, Any] = {"type": attribute_type}
    for key, value in instance.items():
        if key == "type":
            continue
        if key in SYSTEM_MEMBERS:
            if sys_attrs:
                out[key] = value
        elif key == "vocab":
            out[key] = _compact_vocab(value, terms)
        elif key == "objectType":
            out[key] = [terms.compact(item) for item in value]
        elif key == "languageMap" and lang:
            out["type"] = "Property"
            out["value"] = _pick_language(value, lang)
            out["lang"] = lang
        elif key in MEMBERS:
            out[key] = value
        else:
            out[terms.compact(key)] = _render_instance(value, terms, form, sys_attrs, lang)
    if form != "concise":
        return out
    if out["type"] == "Property" and _is_geometry(out.get("value")):
        return out  # without its type, {"value": <geometry>} would read back as a GeoProperty
    del out["type"]
    if not bare_allowed:
        return out
    if attribute_type == "GeoProperty" and set(out) == {"value"}:
        return out["value"]
    bare = set(out) == {value_key} and not isinstance(out[value_key], (dict, list))
    if attribute_type == "Property" and bare:
        return out[value_key]
    return out
