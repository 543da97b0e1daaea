"""The temporal representation of entities: query parameters, durations, rendering."""

import statistics
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from communs.hub.context import term_map
from communs.hub.errors import BadRequestData
from communs.hub.temporal import (
    MAX_LAST_N,
    Period,
    TemporalQuery,
    instance_time,
    parse_duration,
    parse_temporal_query,
    render_temporal_attribute,
)

EX = "https://example.org/"
TERMS = term_map({"accuracy": EX + "accuracy", "Celsius": EX + "Celsius", "speed": EX + "speed"})
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DS1, DS2 = "urn:ngsi-ld:Dataset:one", "urn:ngsi-ld:Dataset:two"


def iso(moment):
    return moment.isoformat().replace("+00:00", "Z")


def at(minutes):
    return iso(T0 + timedelta(minutes=minutes))


def instance(value, minutes, dataset_id=None, type_="Property", **members):
    key = {
        "Property": "value",
        "GeoProperty": "value",
        "Relationship": "object",
        "LanguageProperty": "languageMap",
        "JsonProperty": "json",
        "VocabProperty": "vocab",
        "ListProperty": "valueList",
        "ListRelationship": "objectList",
    }[type_]
    stored = {"type": type_, key: value, "observedAt": at(minutes)}
    if dataset_id is not None:
        stored["datasetId"] = dataset_id
    stored.update(
        createdAt=at(minutes),
        modifiedAt=at(minutes),
        instanceId=f"urn:ngsi-ld:Instance:{dataset_id}:{minutes}",
    )
    stored.update(members)
    return stored


def query(**params):
    return parse_temporal_query(params)


def render(instances, **params):
    return render_temporal_attribute(instances, query(**params), TERMS)


def between(start, end):
    return {"timerel": "between", "timeAt": at(start), "endTimeAt": at(end)}


def aggregate(instances, methods, **params):
    return render(instances, format="aggregatedValues", aggrMethods=",".join(methods), **params)


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "period"),
    [
        ("P1D", Period(days=1)),
        ("PT1H", Period(seconds=3600)),
        ("PT4M", Period(seconds=240)),
        ("P1M", Period(months=1)),
        ("P1Y", Period(years=1)),
        ("P2W", Period(days=14)),
        ("P1Y2M3DT4H5M6.5S", Period(1, 2, 3, 4 * 3600 + 5 * 60 + 6.5)),
        ("PT1,5S", Period(seconds=1.5)),
        ("PT0.5H", Period(seconds=1800)),
        ("P1.5D", Period(days=1, seconds=43200)),
        ("P0.5W", Period(days=3, seconds=43200)),
        ("PT36H", Period(seconds=36 * 3600)),
        ("P0Y1D", Period(days=1)),
        ("PT0.000001S", Period(seconds=0.000001)),
    ],
)
def test_parse_duration(text, period):
    assert parse_duration(text) == period


@pytest.mark.parametrize(
    "text",
    [
        "",
        "P",
        "PT",
        "P1DT",
        "1D",
        "-P1D",
        "P-1D",
        "p1d",
        "P1H",
        "PT1D",
        "P1W1D",
        "P1.5Y",
        "P1.5M",
        "P1.5DT1H",
        "PT1.5H30M",
        "P1D ",
        " P1D",
        "P1,D",
        "P\u0661D",
        "P10001Y",
        "PT999999999999999999999S",
        "P" + "9" * 100 + "D",
        "PT0.0000001S",
        "PT0S",
        "P0D",
        "P0W",
        "P0Y0M0DT0H0M0.0S",
        "2026-01-01T00:00:00Z/P1D",
    ],
)
def test_parse_duration_rejects(text):
    with pytest.raises(BadRequestData):
        parse_duration(text)


def test_parse_duration_rejects_non_strings():
    with pytest.raises(BadRequestData):
        parse_duration(None)


@pytest.mark.parametrize(
    ("start", "period", "expected"),
    [
        (datetime(2026, 1, 31), "P1M", datetime(2026, 2, 28)),
        (datetime(2024, 1, 31), "P1M", datetime(2024, 2, 29)),
        (datetime(2024, 2, 29), "P1Y", datetime(2025, 2, 28)),
        (datetime(2025, 11, 30), "P3M", datetime(2026, 2, 28)),
        (datetime(2026, 1, 31), "P1M1DT1H", datetime(2026, 3, 1, 1)),
        (datetime(2026, 3, 31, 12), "P1Y1M", datetime(2027, 4, 30, 12)),
        (datetime(2026, 1, 1), "P2W", datetime(2026, 1, 15)),
        (datetime(2026, 1, 1, 23, 30), "PT45M", datetime(2026, 1, 2, 0, 15)),
        (datetime(2026, 1, 1), "PT0.25S", datetime(2026, 1, 1, 0, 0, 0, 250_000)),
    ],
)
def test_period_after_is_calendar_aware(start, period, expected):
    start, expected = start.replace(tzinfo=UTC), expected.replace(tzinfo=UTC)
    assert parse_duration(period).after(start) == expected


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_parse_duration_never_fails_otherwise(text):
    try:
        period = parse_duration(text)
    except BadRequestData:
        return
    assert period.approximate_seconds() > 0


@given(
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 999),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
)
def test_parse_duration_round_trip(years, months, days, hours, minutes, seconds):
    date_part = "".join(f"{n}{d}" for n, d in ((years, "Y"), (months, "M"), (days, "D")) if n)
    time_part = "".join(f"{n}{d}" for n, d in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    text = "P" + date_part + ("T" + time_part if time_part else "")
    expected = Period(years, months, days, hours * 3600 + minutes * 60 + seconds)
    if text == "P":
        with pytest.raises(BadRequestData):
            parse_duration(text)
    else:
        assert parse_duration(text) == expected


# ---------------------------------------------------------------- query parameters


def test_defaults():
    parsed = query()
    assert parsed == TemporalQuery(
        timerel=None,
        time_at=None,
        end_time_at=None,
        time_property="observedAt",
        last_n=None,
        form="normalized",
        aggr_methods=(),
        aggr_period=None,
    )
    assert parsed.bounds() == (None, None)


def test_timerel_parameters():
    parsed = query(
        timerel="between",
        timeAt="2026-01-01T12:00:00Z",
        endTimeAt="2026-01-01T15:00:00+02:00",
        timeproperty="modifiedAt",
        lastN="5",
    )
    assert parsed.timerel == "between"
    assert parsed.time_at == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parsed.end_time_at == datetime(2026, 1, 1, 13, tzinfo=UTC)
    assert parsed.end_time_at.utcoffset() == timedelta(0)
    assert parsed.time_property == "modifiedAt"
    assert parsed.last_n == 5


def test_naive_date_times_are_utc():
    parsed = query(timerel="after", timeAt="2026-01-01T12:00:00.250")
    assert parsed.time_at == datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def test_offsets_are_converted_to_utc():
    parsed = query(timerel="before", timeAt="2026-01-01T01:00:00-05:30")
    assert parsed.time_at == datetime(2026, 1, 1, 6, 30, tzinfo=UTC)
    assert parsed.time_at.tzinfo == UTC


@pytest.mark.parametrize(
    ("params", "form"),
    [
        ({"options": "temporalValues"}, "temporalValues"),
        ({"options": "sysAttrs, temporalValues"}, "temporalValues"),
        ({"options": "sysAttrs,keyValues"}, "normalized"),
        ({"format": "temporalValues"}, "temporalValues"),
        ({"format": "normalized", "options": "temporalValues"}, "normalized"),
        ({"format": "temporalValues", "options": "aggregatedValues"}, "temporalValues"),
        ({"options": "aggregatedValues", "aggrMethods": "sum"}, "aggregatedValues"),
        ({"format": "aggregatedValues", "aggrMethods": "sum"}, "aggregatedValues"),
    ],
)
def test_representation(params, form):
    assert query(**params).form == form


def test_aggregation_parameters():
    parsed = query(
        options="aggregatedValues",
        aggrMethods="max, avg,max,totalCount",
        aggrPeriodDuration="PT4M",
    )
    assert parsed.aggr_methods == ("max", "avg", "totalCount")
    assert parsed.aggr_period == Period(seconds=240)


@pytest.mark.parametrize("duration", [None, "PT0S", "P0D", "0", "P0W"])
def test_zero_or_absent_period_spans_the_whole_range(duration):
    params = {"format": "aggregatedValues", "aggrMethods": "sum"}
    if duration is not None:
        params["aggrPeriodDuration"] = duration
    assert query(**params).aggr_period is None


def test_aggregation_parameters_are_ignored_without_aggregated_values():
    parsed = query(aggrMethods="median", aggrPeriodDuration="soon")
    assert parsed.aggr_methods == () and parsed.aggr_period is None


NOW = "2026-01-01T12:00:00Z"
LATER = "2026-01-01T13:00:00Z"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"timerel": "before"}, "timeAt"),
        ({"timerel": "during", "timeAt": NOW}, "timerel"),
        ({"timerel": "Before", "timeAt": NOW}, "timerel"),
        ({"timerel": "", "timeAt": NOW}, "timerel"),
        ({"timeAt": NOW}, "timerel"),
        ({"endTimeAt": LATER}, "timerel"),
        ({"timerel": "between", "timeAt": NOW}, "endTimeAt"),
        ({"timerel": "between", "timeAt": NOW, "endTimeAt": NOW}, "endTimeAt"),
        ({"timerel": "between", "timeAt": LATER, "endTimeAt": NOW}, "endTimeAt"),
        ({"timerel": "after", "timeAt": NOW, "endTimeAt": LATER}, "endTimeAt"),
        ({"timerel": "before", "timeAt": "yesterday"}, "timeAt"),
        ({"timerel": "before", "timeAt": "2026-01-01"}, "timeAt"),
        ({"timerel": "before", "timeAt": "2026-01-01 12:00:00"}, "timeAt"),
        ({"timerel": "before", "timeAt": "2026-13-01T12:00:00Z"}, "timeAt"),
        ({"timerel": "before", "timeAt": ""}, "timeAt"),
        ({"timerel": "between", "timeAt": NOW, "endTimeAt": "later"}, "endTimeAt"),
        ({"timeproperty": "validAt"}, "timeproperty"),
        ({"timeproperty": ""}, "timeproperty"),
        ({"lastN": "0"}, "lastN"),
        ({"lastN": "000"}, "lastN"),
        ({"lastN": "-1"}, "lastN"),
        ({"lastN": "1.5"}, "lastN"),
        ({"lastN": "five"}, "lastN"),
        ({"lastN": ""}, "lastN"),
        ({"lastN": "\u0665"}, "lastN"),
        ({"lastN": str(MAX_LAST_N + 1)}, "lastN"),
        ({"lastN": "9" * 5000}, "lastN"),
        ({"options": "temporalValues,aggregatedValues"}, "options"),
        ({"format": "simplified"}, "format"),
        ({"format": "keyValues"}, "format"),
        ({"format": "aggregatedValues"}, "aggrMethods"),
        ({"options": "aggregatedValues", "aggrMethods": ""}, "aggrMethods"),
        ({"options": "aggregatedValues", "aggrMethods": " , "}, "aggrMethods"),
        ({"options": "aggregatedValues", "aggrMethods": "sum,median"}, "median"),
        (
            {"options": "aggregatedValues", "aggrMethods": "sum", "aggrPeriodDuration": "1h"},
            "aggrPeriodDuration",
        ),
        (
            {"options": "aggregatedValues", "aggrMethods": "sum", "aggrPeriodDuration": "-PT1H"},
            "aggrPeriodDuration",
        ),
        (
            {"options": "aggregatedValues", "aggrMethods": "sum", "aggrPeriodDuration": ""},
            "aggrPeriodDuration",
        ),
    ],
)
def test_invalid_parameters(params, named):
    with pytest.raises(BadRequestData) as raised:
        parse_temporal_query(params)
    assert named in raised.value.detail


def test_max_last_n_is_accepted():
    assert query(lastN=str(MAX_LAST_N)).last_n == MAX_LAST_N
    assert query(lastN="007").last_n == 7


@pytest.mark.parametrize(
    ("timerel", "start", "end"),
    [
        ("before", None, NOW),
        ("after", NOW, None),
        ("between", NOW, LATER),
    ],
)
def test_bounds(timerel, start, end):
    params = {"timerel": timerel, "timeAt": NOW}
    if timerel == "between":
        params["endTimeAt"] = LATER
    as_time = {None: None, NOW: datetime(2026, 1, 1, 12, tzinfo=UTC)}
    as_time[LATER] = datetime(2026, 1, 1, 13, tzinfo=UTC)
    assert parse_temporal_query(params).bounds() == (as_time[start], as_time[end])


def test_before_is_exclusive_after_inclusive_between_half_open():
    noon, one = datetime(2026, 1, 1, 12, tzinfo=UTC), datetime(2026, 1, 1, 13, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    before = query(timerel="before", timeAt=NOW)
    assert before.contains(noon - tick) and not before.contains(noon)
    after = query(timerel="after", timeAt=NOW)
    assert after.contains(noon) and not after.contains(noon - tick)
    window = query(timerel="between", timeAt=NOW, endTimeAt=LATER)
    assert window.contains(noon) and window.contains(one - tick)
    assert not window.contains(one) and not window.contains(noon - tick)


def test_instance_time():
    stored = instance(1, 5)
    assert instance_time(stored, "observedAt") == at(5)
    assert instance_time(stored, "deletedAt") is None
    assert instance_time({"type": "Property", "value": 1, "observedAt": 3}, "observedAt") is None


# ---------------------------------------------------------------- normalized


def test_normalized_keeps_instance_id_time_and_compacts_sub_attributes():
    accuracy = {"type": "Property", "value": 0.5, "unitCode": "CEL"}
    instances = [
        instance(20.5, 0, DS1, unitCode="CEL", **{EX + "accuracy": accuracy}),
        instance(21.0, 10, DS2),
        instance(22.0, 20, DS1),
    ]
    rendered = render(instances)
    assert rendered == [
        {
            "type": "Property",
            "value": 20.5,
            "observedAt": at(0),
            "datasetId": DS1,
            "unitCode": "CEL",
            "instanceId": f"urn:ngsi-ld:Instance:{DS1}:0",
            "accuracy": {"type": "Property", "value": 0.5, "unitCode": "CEL"},
        },
        {
            "type": "Property",
            "value": 21.0,
            "observedAt": at(10),
            "datasetId": DS2,
            "instanceId": f"urn:ngsi-ld:Instance:{DS2}:10",
        },
        {
            "type": "Property",
            "value": 22.0,
            "observedAt": at(20),
            "datasetId": DS1,
            "instanceId": f"urn:ngsi-ld:Instance:{DS1}:20",
        },
    ]


def test_normalized_filters_sorts_and_is_always_a_list():
    instances = [instance(3, 30), instance(1, 10), instance(2, 20)]
    assert [i["value"] for i in render(instances)] == [1, 2, 3]
    [single] = render(instances, **between(15, 25))
    assert single["value"] == 2 and single["instanceId"] == "urn:ngsi-ld:Instance:None:20"
    assert render(instances, **between(40, 50)) == []
    assert render([]) == []


def test_normalized_system_members_and_other_time_properties():
    stored = instance(1, 0, modifiedAt=at(7))
    [plain] = render([stored])
    assert "createdAt" not in plain and "modifiedAt" not in plain
    [by_modification] = render([stored], timeproperty="modifiedAt")
    assert by_modification["modifiedAt"] == at(7) and "createdAt" not in by_modification
    [shown] = render_temporal_attribute([stored], query(), TERMS, sys_attrs=True)
    assert shown["createdAt"] == at(0) and shown["modifiedAt"] == at(7)


def test_instances_without_the_time_property_do_not_match():
    unobserved = instance(9, 0)
    del unobserved["observedAt"]
    deleted = instance("urn:ngsi-ld:null", 5, deletedAt=at(6))
    assert [i["value"] for i in render([unobserved, instance(1, 1)])] == [1]
    [shown] = render([unobserved, deleted], timeproperty="deletedAt")
    assert shown["deletedAt"] == at(6)


def test_normalized_language_property_with_lang():
    stored = instance({"fr": "ouvert", "en": "open"}, 0, type_="LanguageProperty")
    [rendered] = render_temporal_attribute([stored], query(), TERMS, lang="en")
    assert rendered["type"] == "Property"
    assert rendered["value"] == "open" and rendered["lang"] == "en"


def test_times_are_rendered_in_utc():
    stored = instance(1, 0, observedAt="2026-01-01T01:00:00+01:00")
    assert render([stored])[0]["observedAt"] == "2026-01-01T00:00:00Z"
    assert render([stored], format="temporalValues")["values"] == [[1, "2026-01-01T00:00:00Z"]]


# ---------------------------------------------------------------- temporalValues


def test_temporal_values_one_dataset_is_an_object():
    instances = [instance(20.5, 0), instance(21.0, 10)]
    assert render(instances, options="temporalValues") == {
        "type": "Property",
        "values": [[20.5, at(0)], [21.0, at(10)]],
    }


def test_temporal_values_per_dataset():
    instances = [
        instance(1, 0, DS1),
        instance(10, 5, DS2),
        instance(2, 10, DS1),
        instance(0, 12),
        instance(20, 15, DS2),
    ]
    assert render(instances, format="temporalValues") == [
        {"type": "Property", "datasetId": DS1, "values": [[1, at(0)], [2, at(10)]]},
        {"type": "Property", "datasetId": DS2, "values": [[10, at(5)], [20, at(15)]]},
        {"type": "Property", "values": [[0, at(12)]]},
    ]


def test_temporal_values_relationship():
    targets = ["urn:ngsi-ld:Parking:1", "urn:ngsi-ld:Parking:2"]
    instances = [
        instance("urn:ngsi-ld:Parking:1", 0, type_="Relationship"),
        instance(targets, 5, type_="Relationship", objectType=[EX + "speed"]),
    ]
    assert render(instances, format="temporalValues") == {
        "type": "Relationship",
        "objects": [["urn:ngsi-ld:Parking:1", at(0)], [targets, at(5)]],
    }


def test_temporal_values_language_property():
    says = [
        instance({"en": "yes", "fr": "oui"}, 0, type_="LanguageProperty"),
        instance({"en": "no", "fr": "non"}, 5, type_="LanguageProperty"),
    ]
    assert render(says, format="temporalValues") == {
        "type": "LanguageProperty",
        "languageMaps": [
            [{"languageMap": {"en": "yes", "fr": "oui"}}, at(0)],
            [{"languageMap": {"en": "no", "fr": "non"}}, at(5)],
        ],
    }
    in_french = render_temporal_attribute(says, query(format="temporalValues"), TERMS, lang="fr")
    assert in_french == {"type": "Property", "values": [["oui", at(0)], ["non", at(5)]]}


@pytest.mark.parametrize(
    ("type_", "stored", "key", "shown"),
    [
        ("JsonProperty", {"a": [1, 2]}, "jsons", {"json": {"a": [1, 2]}}),
        ("VocabProperty", EX + "Celsius", "vocabs", {"vocab": "Celsius"}),
        ("VocabProperty", [EX + "Celsius", EX + "y"], "vocabs", {"vocab": ["Celsius", EX + "y"]}),
        ("ListProperty", [1, "two"], "valueLists", [1, "two"]),
        (
            "ListRelationship",
            [{"object": "urn:a:1"}, "urn:a:2"],
            "objectLists",
            ["urn:a:1", "urn:a:2"],
        ),
        (
            "GeoProperty",
            {"type": "Point", "coordinates": [-1.55, 47.21]},
            "values",
            {"type": "Point", "coordinates": [-1.55, 47.21]},
        ),
    ],
)
def test_temporal_values_other_attribute_types(type_, stored, key, shown):
    rendered = render([instance(stored, 0, type_=type_)], format="temporalValues")
    assert rendered == {"type": type_, key: [[shown, at(0)]]}


# ---------------------------------------------------------------- lastN


def test_last_n_per_dataset_oldest_first():
    instances = [instance(n, n, DS1 if n % 2 else DS2) for n in range(10)]
    rendered = render(instances, format="temporalValues", lastN="2")
    assert rendered == [
        {"type": "Property", "datasetId": DS2, "values": [[6, at(6)], [8, at(8)]]},
        {"type": "Property", "datasetId": DS1, "values": [[7, at(7)], [9, at(9)]]},
    ]
    assert [i["value"] for i in render(instances, lastN="3")] == [4, 5, 6, 7, 8, 9]


def test_last_n_applies_inside_the_time_range():
    instances = [instance(n, n) for n in range(10)]
    rendered = render(instances, format="temporalValues", lastN="3", **between(2, 6))
    assert rendered["values"] == [[3, at(3)], [4, at(4)], [5, at(5)]]
    assert len(render(instances, lastN="50")) == 10


# ---------------------------------------------------------------- aggregatedValues

ALL_METHODS = ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq")


def expected_aggregates(values):
    return {
        "totalCount": len(values),
        "distinctCount": len(set(values)),
        "sum": sum(values),
        "avg": statistics.mean(values),
        "min": min(values),
        "max": max(values),
        "stddev": statistics.stdev(values),
        "sumsq": sum(v * v for v in values),
    }


def test_each_method_over_the_whole_range():
    values = [3, 1.5, 4, 1.5, 9, 2.25, 6, 5.5]
    instances = [instance(v, 7 * n) for n, v in enumerate(values)]
    rendered = aggregate(instances, ALL_METHODS, **between(0, 60))
    expected = expected_aggregates(values)
    assert rendered["type"] == "Property"
    for method in ALL_METHODS:
        [[result, start, end]] = rendered[method]
        assert (start, end) == (at(0), at(60))
        assert result == pytest.approx(expected[method]), method


def test_each_method_per_period():
    values = [12.0, 7.5, 3.0, 10.0, 11.5, 2.0, 8.0, 8.0, 1.0]
    instances = [instance(v, 10 * n) for n, v in enumerate(values)]
    rendered = aggregate(instances, ALL_METHODS, aggrPeriodDuration="PT30M", **between(0, 90))
    for method in ALL_METHODS:
        assert [(start, end) for _, start, end in rendered[method]] == [
            (at(0), at(30)),
            (at(30), at(60)),
            (at(60), at(90)),
        ]
        for index, (result, _, _) in enumerate(rendered[method]):
            expected = expected_aggregates(values[3 * index : 3 * index + 3])[method]
            assert result == pytest.approx(expected), (method, index)


def test_the_specification_example():
    # Annex C.5.14: max and avg speed per 4 minutes between 12:00 and 13:00.
    speeds = [instance(120, 3), instance(80, 5), instance(100, 7)]
    rendered = aggregate(speeds, ["max", "avg"], aggrPeriodDuration="PT4M", **between(0, 60))
    assert rendered == {
        "type": "Property",
        "max": [[120, at(0), at(4)], [100, at(4), at(8)]],
        "avg": [[120.0, at(0), at(4)], [90.0, at(4), at(8)]],
    }


def test_an_instance_on_a_boundary_opens_the_later_period():
    instances = [instance(1, 0), instance(2, 59), instance(4, 60), instance(8, 120)]
    rendered = aggregate(instances, ["sum"], aggrPeriodDuration="PT1H", **between(0, 180))
    assert rendered["sum"] == [[3, at(0), at(60)], [4, at(60), at(120)], [8, at(120), at(180)]]


def test_empty_periods_are_left_out_and_the_last_is_cut_at_end_time():
    instances = [instance(1, 5), instance(2, 130)]
    rendered = aggregate(instances, ["totalCount"], aggrPeriodDuration="PT50M", **between(0, 140))
    assert rendered["totalCount"] == [[1, at(0), at(50)], [1, at(100), at(140)]]


def test_periods_start_at_time_at_and_before_starts_at_the_first_instance():
    instances = [instance(1, 10), instance(2, 25), instance(4, 50)]
    after = aggregate(instances, ["sum"], aggrPeriodDuration="PT20M", timerel="after", timeAt=at(5))
    assert after["sum"] == [[1, at(5), at(25)], [2, at(25), at(45)], [4, at(45), at(65)]]
    instances = [instance(1, 10), instance(2, 35), instance(4, 50)]
    before = aggregate(
        instances, ["sum"], aggrPeriodDuration="PT20M", timerel="before", timeAt=at(40)
    )
    assert before["sum"] == [[1, at(10), at(30)], [2, at(30), at(40)]]


def test_the_whole_range_without_timerel_is_the_data_range():
    instances = [instance(1, 10), instance(2, 25), instance(4, 50)]
    assert aggregate(instances, ["max"])["max"] == [[4, at(10), at(50)]]
    after = aggregate(instances, ["min"], timerel="after", timeAt=at(20))
    assert after["min"] == [[2, at(20), at(50)]]
    before = aggregate(
        instances, ["min"], aggrPeriodDuration="PT0S", timerel="before", timeAt=at(30)
    )
    assert before["min"] == [[1, at(10), at(30)]]


def test_calendar_month_periods():
    start = datetime(2026, 1, 31, tzinfo=UTC)
    stamps = [start, datetime(2026, 2, 27, tzinfo=UTC), datetime(2026, 2, 28, tzinfo=UTC)]
    stamps.append(datetime(2026, 3, 31, tzinfo=UTC))
    instances = [instance(n, 0, observedAt=iso(s)) for n, s in enumerate(stamps)]
    params = {"timerel": "after", "timeAt": iso(start)}
    rendered = aggregate(instances, ["totalCount"], aggrPeriodDuration="P1M", **params)
    assert rendered["totalCount"] == [
        [2, "2026-01-31T00:00:00Z", "2026-02-28T00:00:00Z"],
        [1, "2026-02-28T00:00:00Z", "2026-03-31T00:00:00Z"],
        [1, "2026-03-31T00:00:00Z", "2026-04-30T00:00:00Z"],
    ]


def test_sparse_data_over_tiny_periods():
    instances = [instance(1, 0), instance(2, 60 * 24 * 300)]
    rendered = aggregate(
        instances, ["sum"], aggrPeriodDuration="PT0.001S", timerel="after", timeAt=at(0)
    )
    assert rendered["sum"] == [
        [1, at(0), "2026-01-01T00:00:00.001Z"],
        [2, at(60 * 24 * 300), "2026-10-28T00:00:00.001Z"],
    ]


def test_aggregation_per_dataset():
    instances = [instance(1, 0, DS1), instance(10, 10, DS2), instance(3, 20, DS1)]
    rendered = aggregate(instances, ["sum", "totalCount"], **between(0, 30))
    assert rendered == [
        {
            "type": "Property",
            "datasetId": DS1,
            "sum": [[4, at(0), at(30)]],
            "totalCount": [[2, at(0), at(30)]],
        },
        {
            "type": "Property",
            "datasetId": DS2,
            "sum": [[10, at(0), at(30)]],
            "totalCount": [[1, at(0), at(30)]],
        },
    ]


def test_relationships_only_count():
    targets = ["urn:a:1", "urn:a:2", "urn:a:1", ["urn:a:1", "urn:a:3"]]
    instances = [instance(t, n, type_="Relationship") for n, t in enumerate(targets)]
    rendered = aggregate(instances, ALL_METHODS, **between(0, 10))
    results = {method: rendered[method][0][0] for method in ALL_METHODS}
    assert rendered["type"] == "Relationship"
    assert results == {
        "totalCount": 4,
        "distinctCount": 3,
        "sum": None,
        "avg": None,
        "min": None,
        "max": None,
        "stddev": None,
        "sumsq": None,
    }


def test_booleans_count_as_one_and_zero():
    flags = [True, False, True, True]
    rendered = aggregate([instance(f, n) for n, f in enumerate(flags)], ALL_METHODS)
    ones = [int(flag) for flag in flags]
    expected = expected_aggregates(ones) | {"distinctCount": 2}
    for method in ALL_METHODS:
        assert rendered[method][0][0] == pytest.approx(expected[method]), method


def test_arrays_aggregate_by_size():
    lists = [[1, 2], [3], [4, 5, 6, 7], [3]]
    rendered = aggregate([instance(v, n) for n, v in enumerate(lists)], ALL_METHODS)
    sizes = [2, 1, 4, 1]
    assert {m: rendered[m][0][0] for m in ALL_METHODS} == {
        "totalCount": 4,
        "distinctCount": 3,
        "sum": sum(sizes),
        "avg": statistics.mean(sizes),
        "min": 1,
        "max": 4,
        "stddev": None,
        "sumsq": None,
    }
    lists_as_property = [instance(v, n, type_="ListProperty") for n, v in enumerate(lists)]
    assert aggregate(lists_as_property, ["max"])["max"][0][0] == 4


def test_strings_only_have_counts_min_and_max():
    words = ["pear", "apple", "fig", "apple"]
    rendered = aggregate([instance(w, n) for n, w in enumerate(words)], ALL_METHODS)
    assert {m: rendered[m][0][0] for m in ALL_METHODS} == {
        "totalCount": 4,
        "distinctCount": 3,
        "sum": None,
        "avg": None,
        "min": "apple",
        "max": "pear",
        "stddev": None,
        "sumsq": None,
    }


def test_date_times_compare_as_instants():
    paris = timezone(timedelta(hours=2))
    stamps = ["2026-06-01T10:30:00+02:00", "2026-06-01T09:00:00Z", "2026-06-01T08:45:00Z"]
    typed = [{"@type": "DateTime", "@value": stamp} for stamp in stamps]
    rendered = aggregate([instance(v, n) for n, v in enumerate(typed)], ["min", "max"])
    assert rendered["min"][0][0] == "2026-06-01T10:30:00+02:00"
    assert datetime.fromisoformat(rendered["min"][0][0]) == datetime(
        2026, 6, 1, 10, 30, tzinfo=paris
    )
    assert rendered["max"][0][0] == "2026-06-01T09:00:00Z"


def test_single_values_and_integer_sums():
    rendered = aggregate([instance(4, 0)], ["stddev", "sum", "sumsq", "avg"])
    assert rendered["stddev"][0][0] is None
    assert rendered["sum"][0][0] == 4 and isinstance(rendered["sum"][0][0], int)
    assert rendered["sumsq"][0][0] == 16 and isinstance(rendered["sumsq"][0][0], int)
    assert rendered["avg"][0][0] == 4.0


def test_distinct_count_is_json_equality():
    values = [1, 1.0, {"a": 1, "b": 2}, {"b": 2, "a": 1}, [1, 2], [2, 1], "1"]
    rendered = aggregate([instance(v, n) for n, v in enumerate(values)], ["distinctCount"])
    assert rendered["distinctCount"][0][0] == 5


def test_last_n_before_aggregation():
    instances = [instance(n, n) for n in range(10)]
    rendered = aggregate(instances, ["sum", "totalCount"], lastN="4")
    assert rendered["sum"] == [[6 + 7 + 8 + 9, at(6), at(9)]]
    assert rendered["totalCount"][0][0] == 4


minutes = st.lists(st.integers(0, 60 * 24 * 90), max_size=40)
periods = st.sampled_from(["PT7M", "PT1H", "P1D", "P1W", "P1M", "P1M3DT2H", "P1Y", None])
ranges = st.one_of(
    st.none(),
    st.tuples(st.sampled_from(["before", "after"]), st.integers(0, 60 * 24 * 90)),
    st.tuples(st.just("between"), st.integers(0, 60 * 24 * 45), st.integers(1, 60 * 24 * 45)),
)


@settings(max_examples=150, deadline=None)
@given(minutes, periods, ranges)
def test_periods_partition_the_instances_in_range(stamps, period, time_range):
    params = {"format": "aggregatedValues", "aggrMethods": "totalCount"}
    if period is not None:
        params["aggrPeriodDuration"] = period
    if time_range is not None:
        params.update(timerel=time_range[0], timeAt=at(time_range[1]))
        if time_range[0] == "between":
            params["endTimeAt"] = at(time_range[1] + time_range[2])
    parsed = parse_temporal_query(params)
    instances = [instance(n, m, DS1 if n % 3 else None) for n, m in enumerate(stamps)]
    inside = [i for i in instances if parsed.contains(datetime.fromisoformat(i["observedAt"]))]
    rendered = render_temporal_attribute(instances, parsed, TERMS)
    if not inside:
        assert rendered == []
        return
    series = rendered if isinstance(rendered, list) else [rendered]
    assert sum(count for s in series for count, _, _ in s["totalCount"]) == len(inside)
    for s in series:
        edges = [
            (datetime.fromisoformat(a), datetime.fromisoformat(b)) for _, a, b in s["totalCount"]
        ]
        assert all(start <= end for start, end in edges)
        assert all(edges[n][1] <= edges[n + 1][0] for n in range(len(edges) - 1))
        assert all(count > 0 for count, _, _ in s["totalCount"])
    for stored in inside:
        moment = datetime.fromisoformat(stored["observedAt"])
        dataset = next(s for s in series if s.get("datasetId") == stored.get("datasetId"))
        spans = [
            (datetime.fromisoformat(a), datetime.fromisoformat(b))
            for _, a, b in dataset["totalCount"]
        ]
        # Periods are half-open; only a range ending at the last instance includes its end.
        last_end = spans[-1][1]
        holders = [s for s in spans if s[0] <= moment and (moment < s[1] or moment == last_end)]
        assert len(holders) == 1
