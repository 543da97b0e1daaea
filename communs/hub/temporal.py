"""The temporal representation of entities, without the store (ETSI GS CIM 009).

``parse_temporal_query`` reads the parameters of ``/ngsi-ld/v1/temporal/entities``: the
temporal query (clause 4.11), ``lastN``, the representation (``format``/``options``,
6.3.12) and the aggregation (``aggrMethods``, ``aggrPeriodDuration``, 4.5.19.1).
``render_temporal_attribute`` renders the stored instances of one attribute in the
normalized (4.5.7), simplified ``temporalValues`` (4.5.9) or ``aggregatedValues``
(4.5.19) temporal representation.

Where the specification leaves room:

- Only instances that carry the query's time property take part (4.11: "Entities which
  do not convey the target Temporal Property shall be considered as non-matching").
- ``lastN`` keeps the last N instances of each datasetId (the OpenAPI says "per
  Attribute, per Entity"; each datasetId is one attribute, as in Stellio), after the
  time filter and before any aggregation.
- Aggregation periods without any instance are left out, as Stellio does: the output
  stays proportional to the data whatever ``aggrPeriodDuration`` is.
- ``stddev`` is the sample standard deviation (PostgreSQL's ``stddev``, used by Stellio
  and Scorpio), null below two values. The per-type semantics follow tables
  4.5.19.1-1 to -3: numbers as such, booleans as 1/0, arrays by their size (except for
  stddev and sumsq), strings only for min/max (by instant when all are date-times,
  else lexicographically); other attribute types only count.

When every instance in range is a plain number, the database computes the aggregates
(``history.number_aggregates``, ``render_number_aggregates``): one ``GROUP BY`` over
the (series, time) index, no instance read into Python. Calendar periods (months,
years), ``lastN``, ``stddev`` and system times aggregate the instances here instead.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from communs.hub.context import TermMap
from communs.hub.document import (
    MEMBERS,
    VALUE_KEY,
    _compact_vocab,
    _pick_language,
    _render_instance,
)
from communs.hub.errors import BadRequestData
from communs.hub.history import EPOCH, PeriodFigures, SeriesFigures
from communs.hub.query import split_list

TIMERELS = ("before", "after", "between")
TIME_PROPERTIES = ("observedAt", "createdAt", "modifiedAt", "deletedAt")
FORMS = ("normalized", "temporalValues", "aggregatedValues")
AGGR_METHODS = ("totalCount", "distinctCount", "sum", "avg", "min", "max", "stddev", "sumsq")
# lastN is bounded like limit, so one request cannot ask for an unbounded history.
MAX_LAST_N = 10_000
# Clause 4.5.9: the member holding the [value, time] pairs of each attribute type.
SERIES_KEY = {
    "Property": "values",
    "GeoProperty": "values",
    "Relationship": "objects",
    "LanguageProperty": "languageMaps",
    "JsonProperty": "jsons",
    "VocabProperty": "vocabs",
    "ListProperty": "valueLists",
    "ListRelationship": "objectLists",
}
MAX_TIME = dt.datetime.max.replace(tzinfo=dt.UTC)

Timed = tuple[dt.datetime, dict[str, Any]]


# ---------------------------------------------------------------- durations


@dataclass(frozen=True)
class Period:
    """An ISO 8601 duration: calendar years and months, days, then seconds."""

    years: int = 0
    months: int = 0
    days: int = 0
    seconds: float = 0.0

    def after(self, start: dt.datetime) -> dt.datetime:
        moment = start
        if self.years or self.months:
            moment = _add_months(moment, self.years * 12 + self.months)
        return moment + dt.timedelta(days=self.days, seconds=self.seconds)

    def times(self, count: int) -> Period:
        return Period(
            self.years * count, self.months * count, self.days * count, self.seconds * count
        )

    def approximate_seconds(self) -> float:
        days = self.years * 365.2425 + self.months * 30.436875 + self.days
        return days * 86_400 + self.seconds


def _add_months(moment: dt.datetime, months: int) -> dt.datetime:
    """Calendar months later, on the same day or the last day of a shorter month."""
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


_NUMBER = r"([0-9]+(?:[.,][0-9]+)?)"
_DURATION = re.compile(
    rf"P(?:{_NUMBER}Y)?(?:{_NUMBER}M)?(?:{_NUMBER}D)?"
    rf"(?:(T)(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?"
)
_WEEKS = re.compile(rf"P{_NUMBER}W")
_MAX_DURATION_DAYS = 10_000 * 366


def parse_duration(text: str) -> Period:
    """A positive ISO 8601 duration, ``PnYnMnDTnHnMnS`` or ``PnW`` (clause 4.5.19.1)."""
    period = _duration(text, "duration")
    if period is None:
        raise BadRequestData(f"duration must be longer than zero: {text!r}")
    return period


def _duration(text: str, what: str) -> Period | None:
    """The duration ``text``, None when it is zero."""
    invalid = BadRequestData(
        f"{what} must be an ISO 8601 duration such as PT1H, P1D, P1M or P2W: {text!r}"
    )
    if not isinstance(text, str) or len(text) > 64:
        raise invalid
    weeks = _WEEKS.fullmatch(text)
    if weeks:
        parts: list[str | None] = [None, None, _times(weeks.group(1), 7), None, None, None]
    else:
        match = _DURATION.fullmatch(text)
        if match is None:
            raise invalid
        y, mo, d, t, h, mi, s = match.groups()
        if t and h is None and mi is None and s is None:
            raise invalid  # a T designator needs a time element after it
        parts = [y, mo, d, h, mi, s]
    present = [part for part in parts if part is not None]
    if not present or not all(part.isdigit() for part in present[:-1]):
        raise invalid  # only the lowest-order element may have a decimal fraction
    if any(part is not None and not part.isdigit() for part in parts[:2]):
        raise invalid  # fractions of calendar years or months have no fixed length
    return _period(parts, text, what)


def _times(number: str, factor: int) -> str:
    if number.isdigit():
        return str(int(number) * factor)
    return repr(float(number.replace(",", ".")) * factor)


def _period(parts: list[str | None], text: str, what: str) -> Period | None:
    years, months = (int(part or 0) for part in parts[:2])
    day_count, hours, minutes, secs = (float((part or "0").replace(",", ".")) for part in parts[2:])
    time_seconds = hours * 3_600 + minutes * 60 + secs
    if years * 366 + months * 31 + day_count + time_seconds / 86_400 > _MAX_DURATION_DAYS:
        raise BadRequestData(f"{what} must not exceed 10000 years: {text!r}")
    days = int(day_count)
    seconds = (day_count - days) * 86_400 + time_seconds
    if not (years or months or days) and 0 < seconds < 1e-6:
        raise BadRequestData(f"{what} must be at least a microsecond: {text!r}")
    if not (years or months or days or seconds):
        return None
    return Period(years, months, days, round(seconds, 6))


# ---------------------------------------------------------------- query parameters


@dataclass(frozen=True)
class TemporalQuery:
    timerel: str | None = None
    time_at: dt.datetime | None = None
    end_time_at: dt.datetime | None = None
    time_property: str = "observedAt"
    last_n: int | None = None
    form: str = "normalized"
    aggr_methods: tuple[str, ...] = ()
    aggr_period: Period | None = None

    def bounds(self) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(inclusive start, exclusive end), as clause 4.11 defines them."""
        if self.timerel == "before":
            return None, self.time_at
        if self.timerel == "after":
            return self.time_at, None
        if self.timerel == "between":
            return self.time_at, self.end_time_at
        return None, None

    def contains(self, moment: dt.datetime) -> bool:
        start, end = self.bounds()
        return (start is None or moment >= start) and (end is None or moment < end)


def parse_temporal_query(params: Mapping[str, str]) -> TemporalQuery:
    timerel, time_at, end_time_at = _parse_timerel(params)
    form = _parse_form(params)
    methods, period = _parse_aggregation(params) if form == "aggregatedValues" else ((), None)
    return TemporalQuery(
        timerel=timerel,
        time_at=time_at,
        end_time_at=end_time_at,
        time_property=_parse_time_property(params.get("timeproperty")),
        last_n=_parse_last_n(params.get("lastN")),
        form=form,
        aggr_methods=methods,
        aggr_period=period,
    )


def parse_time(text: str, what: str) -> dt.datetime:
    """An ISO 8601 date-time as an aware UTC datetime; without offset it is UTC."""
    moment = _datetime(text)
    if moment is None:
        raise BadRequestData(f"{what} must be an ISO 8601 date-time: {text!r}")
    return moment


_DATE_TIME_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T")


def _datetime(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or len(text) > 64 or not text.isascii():
        return None
    if not _DATE_TIME_START.match(text):
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _parse_timerel(
    params: Mapping[str, str],
) -> tuple[str | None, dt.datetime | None, dt.datetime | None]:
    timerel = params.get("timerel")
    raw_at, raw_end = params.get("timeAt"), params.get("endTimeAt")
    if timerel is None:
        if raw_at is not None or raw_end is not None:
            raise BadRequestData("timeAt and endTimeAt need timerel (before, after or between)")
        return None, None, None
    if timerel not in TIMERELS:
        raise BadRequestData(f"timerel must be before, after or between: {timerel!r}")
    if raw_at is None:
        raise BadRequestData(f"timerel={timerel} needs timeAt")
    time_at = parse_time(raw_at, "timeAt")
    if timerel != "between":
        if raw_end is not None:
            raise BadRequestData("endTimeAt is only allowed with timerel=between")
        return timerel, time_at, None
    if raw_end is None:
        raise BadRequestData("timerel=between needs endTimeAt")
    end_time_at = parse_time(raw_end, "endTimeAt")
    if end_time_at <= time_at:
        raise BadRequestData("endTimeAt must be later than timeAt")
    return timerel, time_at, end_time_at


def _parse_time_property(raw: str | None) -> str:
    if raw is None:
        return "observedAt"
    if raw not in TIME_PROPERTIES:
        raise BadRequestData(f"timeproperty must be one of {', '.join(TIME_PROPERTIES)}: {raw!r}")
    return raw


def _parse_last_n(raw: str | None) -> int | None:
    if raw is None:
        return None
    digits = raw.lstrip("0")
    if not (raw.isascii() and raw.isdigit()) or not digits:
        raise BadRequestData(f"lastN must be a positive integer: {raw!r}")
    if len(digits) > 6 or int(digits) > MAX_LAST_N:
        raise BadRequestData(f"lastN must not exceed {MAX_LAST_N}")
    return int(digits)


def _parse_form(params: Mapping[str, str]) -> str:
    """``format`` wins over the deprecated ``options`` keywords (clause 6.3.12)."""
    options = set(split_list(params.get("options")))
    requested = [form for form in ("temporalValues", "aggregatedValues") if form in options]
    if len(requested) > 1:
        raise BadRequestData("options may hold temporalValues or aggregatedValues, not both")
    raw = params.get("format")
    if raw is None:
        return requested[0] if requested else "normalized"
    if raw not in FORMS:
        raise BadRequestData(f"format must be one of {', '.join(FORMS)}: {raw!r}")
    return raw


def _parse_aggregation(params: Mapping[str, str]) -> tuple[tuple[str, ...], Period | None]:
    methods = tuple(dict.fromkeys(split_list(params.get("aggrMethods"))))
    if not methods:
        raise BadRequestData(
            f"aggregatedValues needs aggrMethods, a comma list of {', '.join(AGGR_METHODS)}"
        )
    unknown = [method for method in methods if method not in AGGR_METHODS]
    if unknown:
        raise BadRequestData(
            f"unknown aggrMethods {', '.join(unknown)}; use {', '.join(AGGR_METHODS)}"
        )
    raw = params.get("aggrPeriodDuration")
    # A zero duration ("PT0S", "P0D", or the OpenAPI default "0") spans the whole range.
    if raw is None or raw == "0":
        return methods, None
    return methods, _duration(raw, "aggrPeriodDuration")


# ---------------------------------------------------------------- rendering


def instance_time(instance: dict[str, Any], time_property: str) -> str | None:
    value = instance.get(time_property)
    return value if isinstance(value, str) else None


def format_time(moment: dt.datetime) -> str:
    moment = moment.astimezone(dt.UTC)
    if not moment.microsecond:
        spec = "seconds"
    elif moment.microsecond % 1000 == 0:
        spec = "milliseconds"
    else:
        spec = "microseconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def render_temporal_attribute(
    instances: list[dict[str, Any]],
    query: TemporalQuery,
    terms: TermMap,
    *,
    lang: str | None = None,
    sys_attrs: bool = False,
) -> list[dict[str, Any]] | dict[str, Any]:
    """The instances of one attribute (all datasetIds) in ``query.form``.

    Normalized gives the list of instances (annex C.5.5). temporalValues and
    aggregatedValues give one object per datasetId, the object itself when there is
    one. Nothing in range gives ``[]``: the caller leaves such an attribute out
    (annex C.5.5, example 2).
    """
    timed = _select(instances, query)
    if not timed:
        return []
    if query.form == "normalized":
        return [
            _normalized(moment, instance, query, terms, lang, sys_attrs)
            for moment, instance in timed
        ]
    if query.form == "temporalValues":
        rendered = [_series(group, query, terms, lang) for group in _by_dataset(timed)]
    else:
        window = _window(timed, query)
        rendered = [_aggregated(group, query, window) for group in _by_dataset(timed)]
    return rendered[0] if len(rendered) == 1 else rendered


def _select(instances: list[dict[str, Any]], query: TemporalQuery) -> list[Timed]:
    """The instances inside the query's time range, oldest first, cut to lastN."""
    timed = []
    for instance in instances:
        moment = _datetime(instance_time(instance, query.time_property))
        if moment is not None and query.contains(moment):
            timed.append((moment, instance))
    timed.sort(key=lambda pair: pair[0])
    if query.last_n is None:
        return timed
    kept: list[Timed] = []
    seen: Counter[str | None] = Counter()
    for moment, instance in reversed(timed):
        dataset_id = instance.get("datasetId")
        if seen[dataset_id] < query.last_n:
            seen[dataset_id] += 1
            kept.append((moment, instance))
    kept.reverse()
    return kept


def _by_dataset(timed: list[Timed]) -> list[list[Timed]]:
    groups: dict[str | None, list[Timed]] = {}
    for pair in timed:
        groups.setdefault(pair[1].get("datasetId"), []).append(pair)
    return list(groups.values())


def _time_text(moment: dt.datetime, raw: str | None) -> str:
    return raw if raw is not None and raw.endswith("Z") else format_time(moment)


def _head(group: list[Timed]) -> dict[str, Any]:
    """Type and datasetId of a series; the newest instance gives the type."""
    head: dict[str, Any] = {"type": group[-1][1]["type"]}
    dataset_id = group[0][1].get("datasetId")
    if dataset_id is not None:
        head["datasetId"] = dataset_id
    return head


def _normalized(
    moment: dt.datetime,
    instance: dict[str, Any],
    query: TemporalQuery,
    terms: TermMap,
    lang: str | None,
    sys_attrs: bool,
) -> dict[str, Any]:
    # Members and sub-attributes render as in an entity; scalar extras such as
    # instanceId are kept as they are.
    body = {k: v for k, v in instance.items() if k in MEMBERS or isinstance(v, dict)}
    out = _render_instance(body, terms, "normalized", sys_attrs, lang)
    out.update((k, v) for k, v in instance.items() if k not in body)
    prop = query.time_property
    out[prop] = _time_text(moment, instance_time(instance, prop))
    return out


def _series(
    group: list[Timed], query: TemporalQuery, terms: TermMap, lang: str | None
) -> dict[str, Any]:
    out = _head(group)
    key = SERIES_KEY[out["type"]]
    if out["type"] == "LanguageProperty" and lang:
        out["type"], key = "Property", "values"  # lang reduces each languageMap to a string
    prop = query.time_property
    out[key] = [
        [_series_value(instance, terms, lang), _time_text(moment, instance_time(instance, prop))]
        for moment, instance in group
    ]
    return out


def _series_value(instance: dict[str, Any], terms: TermMap, lang: str | None) -> Any:
    attribute_type = instance["type"]
    value = instance.get(VALUE_KEY[attribute_type])
    if attribute_type == "LanguageProperty":
        return _pick_language(value, lang) if lang else {"languageMap": value}
    if attribute_type == "JsonProperty":
        return {"json": value}
    if attribute_type == "VocabProperty":
        return {"vocab": _compact_vocab(value, terms)}
    if attribute_type == "ListRelationship":
        return [item.get("object") if isinstance(item, dict) else item for item in value]
    return value


# ---------------------------------------------------------------- aggregation


def _window(timed: list[Timed], query: TemporalQuery) -> tuple[dt.datetime, dt.datetime, bool]:
    """(origin, end, end is inclusive): the query's range, else the data's."""
    start, end = query.bounds()
    origin = timed[0][0] if start is None else start
    if end is None:
        return origin, timed[-1][0], True
    return origin, end, False


def _aggregated(
    group: list[Timed], query: TemporalQuery, window: tuple[dt.datetime, dt.datetime, bool]
) -> dict[str, Any]:
    out = _head(group)
    buckets = _buckets(group, query.aggr_period, window)
    for method in query.aggr_methods:
        out[method] = [
            [_aggregate(method, out["type"], values), format_time(start), format_time(end)]
            for start, end, values in buckets
        ]
    return out


def database_period(query: TemporalQuery) -> int | None | bool:
    """How the database can aggregate ``query``: the period in microseconds, None for
    one period over the whole range, False when it cannot (the instances themselves are
    aggregated then): calendar periods, lastN, stddev (its stable algorithm needs every
    value), system times, or a period without a start to count it from."""
    if (
        query.form != "aggregatedValues"
        or query.time_property != "observedAt"
        or query.last_n is not None
        or "stddev" in query.aggr_methods
    ):
        return False
    period = query.aggr_period
    if period is None or period.approximate_seconds() <= 0:
        return None
    fixed = _fixed_length(period)
    if fixed is None or query.bounds()[0] is None or fixed % dt.timedelta(microseconds=1):
        return False
    return fixed // dt.timedelta(microseconds=1)


def render_number_aggregates(
    series: list[SeriesFigures], query: TemporalQuery, *, periodic: bool
) -> list[dict[str, Any]] | dict[str, Any]:
    """The aggregatedValues of one attribute from the database's figures (numbers
    only, so every series is a Property); the same output as aggregating instances.
    ``periodic``: the figures are per ``aggrPeriodDuration`` (else one over the range)."""
    series = sorted(series, key=lambda one: (one.periods[0].first, one.dataset_id))
    start, end = query.bounds()
    window = (
        start or _moment(min(one.periods[0].first for one in series)),
        end or _moment(max(one.periods[-1].last for one in series)),
        end is None,
    )

    def bounds(index: int) -> list[str]:
        if not periodic:
            return [format_time(window[0]), format_time(window[1])]
        return [format_time(moment) for moment in _bucket_bounds(window, query.aggr_period, index)]

    rendered = []
    for one in series:
        out: dict[str, Any] = {"type": "Property"}
        if one.dataset_id:
            out["datasetId"] = one.dataset_id
        limits = [bounds(figures.index) for figures in one.periods]
        for method in query.aggr_methods:
            out[method] = [
                [_figure(method, figures), *limit]
                for figures, limit in zip(one.periods, limits, strict=True)
            ]
        rendered.append(out)
    return rendered[0] if len(rendered) == 1 else rendered


def _moment(micros: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=micros)


def _figure(method: str, figures: PeriodFigures) -> int | float | None:
    if method == "totalCount":
        return figures.count
    if method == "distinctCount":
        return figures.distinct
    if method == "avg":
        return figures.total / figures.count
    number = {
        "sum": figures.total,
        "min": figures.smallest,
        "max": figures.largest,
        "sumsq": figures.squares,
    }[method]
    return int(number) if float(number).is_integer() and abs(number) < 2**53 else number


def _buckets(
    group: list[Timed], period: Period | None, window: tuple[dt.datetime, dt.datetime, bool]
) -> list[tuple[dt.datetime, dt.datetime, list[Any]]]:
    """Non-empty periods from the origin; an instance on a boundary opens the next one."""
    origin, end, inclusive = window
    if period is None or period.approximate_seconds() <= 0:
        return [(origin, end, [_value(instance) for _, instance in group])]
    values: dict[int, list[Any]] = {}
    for moment, instance in group:
        values.setdefault(_bucket_index(origin, period, moment), []).append(_value(instance))
    buckets = []
    for index, bucket_values in values.items():
        buckets.append((*_bucket_bounds(window, period, index), bucket_values))
    return buckets


def _bucket_bounds(
    window: tuple[dt.datetime, dt.datetime, bool], period: Period, index: int
) -> tuple[dt.datetime, dt.datetime]:
    """Start and end of period number ``index`` (the last one ends with the range)."""
    origin, end, inclusive = window
    bucket_end = _shift(origin, period, index + 1)
    if not inclusive:
        bucket_end = min(bucket_end, end)
    return _shift(origin, period, index), bucket_end


def _shift(origin: dt.datetime, period: Period, count: int) -> dt.datetime:
    """The start of period number ``count``; computed from the origin, so that month
    ends do not drift (Jan 31, Feb 29, Mar 31)."""
    fixed = _fixed_length(period)
    try:
        if fixed is not None:
            return origin + fixed * count
        return period.times(count).after(origin)
    except (OverflowError, ValueError):
        return MAX_TIME


def _bucket_index(origin: dt.datetime, period: Period, moment: dt.datetime) -> int:
    """The period holding ``moment``: estimated from the mean period length, then
    corrected, so sparse data over many short periods costs no walk through them."""
    fixed = _fixed_length(period)
    if fixed is not None:  # days and seconds only: exact arithmetic
        return max(0, (moment - origin) // fixed)
    elapsed = (moment - origin).total_seconds()
    index = max(0, int(elapsed // period.approximate_seconds()))
    while index > 0 and _shift(origin, period, index) > moment:
        index -= 1
    while _shift(origin, period, index + 1) <= moment:
        index += 1
    return index


def _fixed_length(period: Period) -> dt.timedelta | None:
    if period.years or period.months:
        return None
    return dt.timedelta(days=period.days, seconds=period.seconds)


def _value(instance: dict[str, Any]) -> Any:
    value = instance.get(VALUE_KEY[instance["type"]])
    if isinstance(value, dict) and "@value" in value:
        return value["@value"]
    return value


def _aggregate(method: str, attribute_type: str, values: list[Any]) -> Any:
    if method == "totalCount":
        return len(values)
    if method == "distinctCount":
        return len({_canonical(value) for value in values})
    if attribute_type not in ("Property", "ListProperty"):
        return None  # N/A for relationships, geometries, language maps, JSON, vocabularies
    if method in ("min", "max"):
        return _extreme(method, values)
    numbers = _numbers(method, values)
    if not numbers:
        return None
    if method == "sum":
        return _sum(numbers)
    if method == "avg":
        return math.fsum(numbers) / len(numbers)
    if method == "sumsq":
        return _sum([number * number for number in numbers])
    return statistics.stdev(numbers) if len(numbers) > 1 else None


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 and 1.0 are the same JSON number
    return ("json", orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def _numbers(method: str, values: list[Any]) -> list[int | float]:
    numbers: list[int | float] = []
    for value in values:
        if isinstance(value, bool):
            numbers.append(int(value))
        elif isinstance(value, int | float):
            numbers.append(value)
        elif isinstance(value, list) and method in ("sum", "avg", "min", "max"):
            numbers.append(len(value))
    return numbers


def _sum(numbers: list[int | float]) -> int | float:
    if all(isinstance(number, int) for number in numbers):
        return sum(numbers)
    return math.fsum(numbers)


def _extreme(method: str, values: list[Any]) -> Any:
    pick = max if method == "max" else min
    numbers = _numbers(method, values)
    if numbers:
        return pick(numbers)
    strings = [value for value in values if isinstance(value, str)]
    if not strings:
        return None
    instants = [_datetime(text) for text in strings]
    if None in instants:
        return pick(strings)
    return pick(zip(instants, strings, strict=True))[1]
