"""NGSI-LD geo-queries: parsing, every georel, distances, the bbox pre-filter, fuzzing."""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from communs.hub.geoquery import (
    EARTH_RADIUS_M,
    GEORELS,
    METRES_PER_DEGREE,
    QUERY_GEOMETRIES,
    GeoQuery,
    GeoQuerySyntaxError,
    InvalidGeometry,
    geometry_bbox,
    haversine,
    parse_geoquery,
    validate_geometry,
)

FUZZ = settings(max_examples=300, deadline=None)
TOURS = (0.69, 47.39)
AMBOISE = (0.98, 47.41)
KM_LAT = 1000 / METRES_PER_DEGREE
KM_LON = KM_LAT / math.cos(math.radians(TOURS[1]))


# --- helpers -------------------------------------------------------------------------------


def point(lon: float, lat: float) -> dict:
    return {"type": "Point", "coordinates": [lon, lat]}


def ring(lon: float, lat: float, half: float) -> list[list[float]]:
    """A closed square ring centred on (lon, lat), counter-clockwise."""
    w, e, s, n = lon - half, lon + half, lat - half, lat + half
    return [[w, s], [e, s], [e, n], [w, n], [w, s]]


def polygon(*rings: list[list[float]]) -> dict:
    return {"type": "Polygon", "coordinates": list(rings)}


def text(value: Any) -> str:
    return orjson.dumps(value).decode()


def query(georel: str, geometry: dict, geoproperty: str | None = None) -> GeoQuery:
    parsed = parse_geoquery(georel, geometry["type"], text(geometry["coordinates"]), geoproperty)
    assert parsed is not None
    return parsed


def cosine_law(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """An independent great-circle distance: angle between unit vectors."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    a = (math.cos(p1) * math.cos(dl), math.cos(p1) * math.sin(dl), math.sin(p1))
    b = (math.cos(p2), 0.0, math.sin(p2))
    cross = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
    return EARTH_RADIUS_M * math.atan2(
        math.hypot(*cross), sum(x * y for x, y in zip(a, b, strict=True))
    )


def destination(lon: float, lat: float, bearing: float, metres: float) -> tuple[float, float]:
    """The point reached from (lon, lat) along a great circle: the direct geodesic problem."""
    delta, theta = metres / EARTH_RADIUS_M, math.radians(bearing)
    phi1, lambda1 = math.radians(lat), math.radians(lon)
    sin_phi2 = math.sin(phi1) * math.cos(delta) + math.cos(phi1) * math.sin(delta) * math.cos(theta)
    phi2 = math.asin(max(-1.0, min(1.0, sin_phi2)))
    lambda2 = lambda1 + math.atan2(
        math.sin(theta) * math.sin(delta) * math.cos(phi1),
        math.cos(delta) - math.sin(phi1) * sin_phi2,
    )
    lon2 = math.degrees(lambda2)
    if abs(lon2) > 180:
        lon2 -= math.copysign(360, lon2)
    return lon2, math.degrees(phi2)


def boxes_intersect(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


ZONE = polygon(ring(*TOURS, 0.05))
ZONE_WITH_HOLE = polygon(ring(*TOURS, 0.05), ring(*TOURS, 0.01))
TWO_TOWNS = {
    "type": "MultiPolygon",
    "coordinates": [[ring(*TOURS, 0.02)], [ring(*AMBOISE, 0.02)]],
}


# --- parsing -------------------------------------------------------------------------------


def test_no_geoquery_gives_none() -> None:
    assert parse_geoquery(None, None, None) is None
    assert parse_geoquery(None, None, None, "observationSpace") is None


def test_parses_a_query_string() -> None:
    parsed = parse_geoquery("near;maxDistance==1000", "Point", "[0.69,47.39]")
    assert parsed == GeoQuery("near", 1000.0, None, point(*TOURS), "location")
    assert parsed.geoproperty == "location"


def test_parses_a_post_body_geoq() -> None:
    parsed = parse_geoquery("within", "Polygon", ZONE["coordinates"], "observationSpace")
    assert parsed is not None
    assert (parsed.georel, parsed.max_distance, parsed.min_distance) == ("within", None, None)
    assert parsed.geometry == ZONE
    assert parsed.geoproperty == "observationSpace"


@pytest.mark.parametrize(
    ("georel", "max_distance", "min_distance"),
    [
        ("near;maxDistance==1000", 1000.0, None),
        ("near;minDistance==10", None, 10.0),
        ("near;maxDistance==0", 0.0, None),
        ("near;maxDistance==12.5", 12.5, None),
        ("near;maxDistance==1e3", 1000.0, None),
        (" near;maxDistance==2000 ", 2000.0, None),
    ],
)
def test_near_distances(
    georel: str, max_distance: float | None, min_distance: float | None
) -> None:
    parsed = parse_geoquery(georel, "Point", "[0.69, 47.39]")
    assert parsed is not None
    assert (parsed.max_distance, parsed.min_distance) == (max_distance, min_distance)


def test_geometry_name_is_case_insensitive_and_canonicalised() -> None:
    parsed = parse_geoquery("intersects", "multipolygon", TWO_TOWNS["coordinates"])
    assert parsed is not None
    assert parsed.geometry["type"] == "MultiPolygon"


def test_geoproperty_is_returned_as_given() -> None:
    iri = "https://smartdatamodels.org/dataModel.Parking/location"
    assert query("within", ZONE, iri).geoproperty == iri


def test_altitude_is_accepted() -> None:
    assert query("near;maxDistance==5", {"type": "Point", "coordinates": [0.69, 47.39, 120]})


def test_to_geoq_round_trips() -> None:
    for original in (query("near;minDistance==250", point(*TOURS)), query("overlaps", ZONE)):
        geoq = original.to_geoq()
        again = parse_geoquery(
            geoq["georel"], geoq["geometry"], geoq["coordinates"], geoq["geoproperty"]
        )
        assert again == original
        assert hash(again) == hash(original)
    assert query("near;maxDistance==1000", point(*TOURS)).to_geoq()["georel"] == (
        "near;maxDistance==1000"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("within", None, None), "missing geometry and coordinates"),
        ((None, "Point", "[1,2]"), "missing georel"),
        (("within", "Point", None), "missing coordinates"),
        (("", "Point", "[1,2]"), "unknown georel ''"),
        (("nearby", "Point", "[1,2]"), "unknown georel 'nearby'"),
        (("Within", "Point", "[1,2]"), "unknown georel 'Within'"),
        (("near", "Point", "[1,2]"), "needs exactly one modifier"),
        (("near;maxDistance==1;minDistance==0", "Point", "[1,2]"), "exactly one modifier"),
        (("near;maxDistance:1000", "Point", "[1,2]"), "invalid near modifier"),
        (("near;distance==1000", "Point", "[1,2]"), "invalid near modifier"),
        (("near;maxDistance==-5", "Point", "[1,2]"), "must be a non-negative number"),
        (("near;maxDistance==abc", "Point", "[1,2]"), "invalid maxDistance 'abc'"),
        (("near;minDistance==", "Point", "[1,2]"), "invalid minDistance"),
        (("near;maxDistance==1e999", "Point", "[1,2]"), "non-negative number"),
        (("near;maxDistance==nan", "Point", "[1,2]"), "non-negative number"),
        (("within;maxDistance==5", "Point", "[1,2]"), "takes no modifier"),
        (("within", "Circle", "[1,2]"), "unknown geometry 'Circle'"),
        (("within", "GeometryCollection", "[1,2]"), "unknown geometry"),
        ((3, "Point", "[1,2]"), "georel must be a string"),
        (("within", ["Point"], "[1,2]"), "geometry must be a string"),
        (("within", "Point", "1,2"), "not a valid JSON array"),
        (("within", "Point", "[1,2"), "not a valid JSON array"),
        (("within", "Point", "[NaN, 2]"), "not a valid JSON array"),
        (("within", "Point", '{"lon": 1}'), "must be a JSON array"),
        (("within", "Point", 12), "must be a JSON array"),
        (("within", "Point", "[1]"), "must be a position"),
        (("within", "Point", "[1,2,3,4]"), "must be a position"),
        (("within", "Point", '["1",2]'), "'1' is not a number"),
        (("within", "Point", "[true,2]"), "True is not a number"),
        (("within", "Point", "[181,2]"), "longitude 181 is outside -180..180"),
        (("within", "Point", "[1,-91]"), "latitude -91 is outside -90..90"),
        (("within", "Point", "[[1,2]]"), "must be a position"),
        (("within", "MultiPoint", "[]"), "at least 1 position"),
        (("within", "LineString", "[[1,2]]"), "at least 2 position"),
        (("within", "LineString", "[[1,2],[1,2]]"), "valid LineString"),
        (("within", "MultiLineString", "[[1,2],[3,4]]"), "coordinates[0][0] must be a position"),
        (("within", "Polygon", "[[[0,0],[1,0],[0,1]]]"), "at least 4 position"),
        (("within", "Polygon", "[[[0,0],[1,0],[1,1],[0,1]]]"), "not a closed linear ring"),
        (("within", "Polygon", "[[0,0],[1,0],[1,1],[0,0]]"), "must be an array of at least 4"),
        (("within", "Polygon", "[[[0,0],[1,1],[1,0],[0,1],[0,0]]]"), "Self-intersection"),
        (("within", "MultiPolygon", "[[[0,0],[1,0],[1,1],[0,0]]]"), "coordinates[0][0]"),
        (("within", "Point", "[1,2]", ""), "geoproperty must be an attribute name"),
        (("within", "Point", "[1,2]", "a b"), "geoproperty must be an attribute name"),
        (("within", "Point", "[1,2]", 7), "geoproperty must be an attribute name"),
    ],
)
def test_syntax_errors(args: tuple, message: str) -> None:
    with pytest.raises(GeoQuerySyntaxError, match=re.escape(message)):
        parse_geoquery(*args)


def test_size_limits() -> None:
    with pytest.raises(GeoQuerySyntaxError, match="too long"):
        parse_geoquery("within", "MultiPoint", "[" + " " * 100_001 + "]")
    many = text([[0, 47]] * 10_001)
    with pytest.raises(GeoQuerySyntaxError, match="too many positions"):
        parse_geoquery("within", "MultiPoint", many)
    assert parse_geoquery("intersects", "MultiPoint", text([[0, 47]] * 10_000))


def test_deep_nesting_is_refused_without_recursion() -> None:
    with pytest.raises(GeoQuerySyntaxError):
        parse_geoquery("within", "Polygon", "[" * 5000 + "]" * 5000)
    deep: list = []
    for _ in range(200_000):
        deep = [deep]
    with pytest.raises(GeoQuerySyntaxError):
        parse_geoquery("within", "MultiPolygon", deep)


def test_unprintable_coordinates_still_give_a_syntax_error() -> None:
    with pytest.raises(GeoQuerySyntaxError, match="not a finite number"):
        parse_geoquery("within", "Point", [0, 0, 10**5000])
    with pytest.raises(GeoQuerySyntaxError, match="not a finite number"):
        parse_geoquery("within", "Point", [-(10**5000), 0])


def test_direct_construction_is_checked() -> None:
    with pytest.raises(GeoQuerySyntaxError):
        GeoQuery("near", None, None, point(*TOURS))
    with pytest.raises(GeoQuerySyntaxError):
        GeoQuery("within", 5.0, None, point(*TOURS))
    with pytest.raises(GeoQuerySyntaxError):
        GeoQuery("near", -1.0, None, point(*TOURS))
    with pytest.raises(InvalidGeometry):
        GeoQuery("within", None, None, {"type": "Point", "coordinates": [0, 95]})


# --- topological georels -------------------------------------------------------------------

INSIDE = point(0.72, 47.42)
OUTSIDE = point(0.80, 47.39)
ON_EDGE = point(0.74, 47.39)
IN_HOLE = point(*TOURS)
SMALL = polygon(ring(0.72, 47.42, 0.01))
SHIFTED = polygon(ring(0.73, 47.39, 0.05))
BIG = polygon(ring(*TOURS, 0.2))
ACROSS = {"type": "LineString", "coordinates": [[0.60, 47.39], [0.80, 47.39]]}
FAR_LINE = {"type": "LineString", "coordinates": [[1.60, 47.39], [1.80, 47.39]]}
ZONE_ROTATED = polygon(ring(*TOURS, 0.05)[2:] + ring(*TOURS, 0.05)[1:3])


@pytest.mark.parametrize(
    ("georel", "reference", "target", "expected"),
    [
        ("within", ZONE, INSIDE, True),
        ("within", ZONE, OUTSIDE, False),
        ("within", ZONE, ON_EDGE, False),
        ("within", ZONE, SMALL, True),
        ("within", ZONE, SHIFTED, False),
        ("within", ZONE, ACROSS, False),
        ("within", ZONE_WITH_HOLE, INSIDE, True),
        ("within", ZONE_WITH_HOLE, IN_HOLE, False),
        ("within", TWO_TOWNS, point(*AMBOISE), True),
        ("within", TWO_TOWNS, point(0.85, 47.40), False),
        ("within", TWO_TOWNS, polygon(ring(*AMBOISE, 0.01)), True),
        ("contains", point(*INSIDE["coordinates"]), ZONE, True),
        ("contains", point(*OUTSIDE["coordinates"]), ZONE, False),
        ("contains", point(*TOURS), point(*TOURS), True),
        ("contains", SMALL, ZONE, True),
        ("contains", ZONE, SMALL, False),
        ("contains", point(*IN_HOLE["coordinates"]), ZONE_WITH_HOLE, False),
        ("intersects", ZONE, ACROSS, True),
        ("intersects", ZONE, ON_EDGE, True),
        ("intersects", ZONE, INSIDE, True),
        ("intersects", ZONE, OUTSIDE, False),
        ("intersects", ZONE, FAR_LINE, False),
        ("intersects", ZONE_WITH_HOLE, IN_HOLE, False),
        ("intersects", TWO_TOWNS, ACROSS, True),
        ("disjoint", ZONE, OUTSIDE, True),
        ("disjoint", ZONE, FAR_LINE, True),
        ("disjoint", ZONE, INSIDE, False),
        ("disjoint", ZONE, ON_EDGE, False),
        ("disjoint", ZONE_WITH_HOLE, IN_HOLE, True),
        ("equals", ZONE, ZONE_ROTATED, True),
        ("equals", ZONE, SHIFTED, False),
        ("equals", point(*TOURS), point(*TOURS), True),
        ("equals", point(*TOURS), {"type": "MultiPoint", "coordinates": [list(TOURS)] * 2}, True),
        ("equals", point(*TOURS), point(0.69, 47.3901), False),
        ("overlaps", ZONE, SHIFTED, True),
        ("overlaps", ZONE, SMALL, False),
        ("overlaps", ZONE, BIG, False),
        ("overlaps", ZONE, INSIDE, False),
        ("overlaps", ZONE, polygon(ring(0.90, 47.39, 0.05)), False),
    ],
)
def test_georel(georel: str, reference: dict, target: dict, expected: bool) -> None:
    assert query(georel, reference).matches(target) is expected


def test_targets_of_every_geojson_type() -> None:
    within = query("within", ZONE)
    inside_targets = [
        {"type": "MultiPoint", "coordinates": [[0.70, 47.40], [0.71, 47.41]]},
        {"type": "MultiLineString", "coordinates": [[[0.70, 47.40], [0.71, 47.41]]]},
        {"type": "MultiPolygon", "coordinates": [[ring(0.70, 47.40, 0.005)]]},
        {"type": "GeometryCollection", "geometries": [INSIDE, SMALL]},
        {"type": "Point", "coordinates": [0.72, 47.42, 95.5]},
    ]
    assert all(within.matches(target) for target in inside_targets)
    straddling = {"type": "GeometryCollection", "geometries": [INSIDE, OUTSIDE]}
    assert not within.matches(straddling)
    assert query("intersects", ZONE).matches(straddling)


@pytest.mark.parametrize(
    "target",
    [
        None,
        "POINT(0.69 47.39)",
        [0.69, 47.39],
        {},
        {"type": "Point"},
        {"type": "Feature", "geometry": point(*TOURS)},
        {"type": "Point", "coordinates": [0.69, 95]},
        {"type": "Point", "coordinates": ["0.69", 47.39]},
        {"type": "Polygon", "coordinates": [[[0.6, 47.3], [0.8, 47.3], [0.8, 47.5]]]},
        {"type": "GeometryCollection", "geometries": []},
        {"type": ["Point"], "coordinates": [0.69, 47.39]},
    ],
)
def test_invalid_targets_never_match(target: Any) -> None:
    for georel in ("within", "intersects", "disjoint", "near;minDistance==0"):
        assert query(georel, ZONE).matches(target) is False


def test_self_intersecting_target_does_not_raise() -> None:
    bowtie = polygon([[0.68, 47.38], [0.70, 47.40], [0.70, 47.38], [0.68, 47.40], [0.68, 47.38]])
    for georel in GEORELS:
        full = "near;maxDistance==10" if georel == "near" else georel
        assert query(full, ZONE).matches(bowtie) in (True, False)


def test_a_shared_query_is_thread_safe() -> None:
    steps = 5000
    circle = [
        [
            TOURS[0] + 0.1 * math.cos(2 * math.pi * i / steps),
            TOURS[1] + 0.1 * math.sin(2 * math.pi * i / steps),
        ]
        for i in range(steps)
    ]
    circle.append(circle[0])
    targets = [point(0.55 + i * 0.007, 47.25 + j * 0.007) for i in range(40) for j in range(40)]
    alone = GeoQuery("within", None, None, polygon(circle))
    expected = [alone.matches(target) for target in targets]
    assert 0 < sum(expected) < len(targets)
    shared = GeoQuery("within", None, None, polygon(circle))
    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(lambda _: [shared.matches(t) for t in targets], range(16)))
    assert all(run == expected for run in runs)


# --- near ----------------------------------------------------------------------------------

NORTH_1KM = point(TOURS[0], TOURS[1] + KM_LAT)
EAST_1KM = point(TOURS[0] + KM_LON, TOURS[1])


def test_point_distances_are_great_circle_metres() -> None:
    near = query("near;maxDistance==1000", point(*TOURS))
    assert near.distance(NORTH_1KM) == pytest.approx(1000, abs=1e-6)
    assert near.distance(EAST_1KM) == pytest.approx(1000, rel=1e-4)
    orleans = (1.9093, 47.9029)
    expected = cosine_law(*TOURS, *orleans)
    assert near.distance(point(*orleans)) == pytest.approx(expected, rel=1e-9)
    assert 100_000 < expected < 110_000


@pytest.mark.parametrize(
    ("georel", "expected"),
    [
        ("near;maxDistance==1001", True),
        ("near;maxDistance==999", False),
        ("near;minDistance==999", True),
        ("near;minDistance==1001", False),
        ("near;minDistance==0", True),
        ("near;maxDistance==0", False),
    ],
)
def test_near_points_one_kilometre_apart(georel: str, expected: bool) -> None:
    reference = query(georel, point(*TOURS))
    assert reference.matches(NORTH_1KM) is expected
    assert reference.matches(EAST_1KM) is expected


def test_near_linestring_target() -> None:
    line = {"type": "LineString", "coordinates": [[0.68, 47.40], [0.70, 47.40]]}
    gap = 0.01 * METRES_PER_DEGREE  # 1111.95 m due north of Tours, to the line's middle
    assert query("near;maxDistance==1", point(*TOURS)).distance(line) == pytest.approx(
        gap, rel=1e-6
    )
    assert query("near;maxDistance==1200", point(*TOURS)).matches(line)
    assert not query("near;maxDistance==1100", point(*TOURS)).matches(line)
    assert query("near;minDistance==1100", point(*TOURS)).matches(line)
    assert not query("near;minDistance==1200", point(*TOURS)).matches(line)


def test_near_polygon_reference() -> None:
    east_edge = TOURS[0] + 0.05
    target = point(east_edge + KM_LON, TOURS[1])
    assert query("near;maxDistance==1", ZONE).distance(target) == pytest.approx(1000, rel=1e-3)
    assert query("near;maxDistance==1010", ZONE).matches(target)
    assert not query("near;maxDistance==990", ZONE).matches(target)
    assert query("near;maxDistance==0", ZONE).matches(INSIDE)
    assert not query("near;minDistance==1", ZONE).matches(INSIDE)
    assert query("near;minDistance==1", ZONE_WITH_HOLE).matches(IN_HOLE)


def test_near_across_the_antimeridian() -> None:
    near = query("near;maxDistance==2000", point(179.995, 0))
    assert near.matches(point(-179.995, 0))
    two_km = 2000 / METRES_PER_DEGREE
    assert near.bbox() == pytest.approx((-180.0, -two_km, 180.0, two_km), rel=1e-5)


LINE_REFERENCE = {"type": "LineString", "coordinates": [[0.40, 47.20], [0.69, 47.39], [1.0, 47.6]]}


def brute_force_distance(line: list[list[float]], lon: float, lat: float) -> float:
    """Minimum over 2,000 points per edge, interpolated in longitude/latitude."""
    best = math.inf
    for (x1, y1), (x2, y2) in zip(line, line[1:], strict=False):
        for i in range(2001):
            t = i / 2000
            best = min(best, haversine(x1 + t * (x2 - x1), y1 + t * (y2 - y1), lon, lat))
    return best


@FUZZ
@given(
    lon=st.floats(0.2, 1.2),
    lat=st.floats(47.0, 47.8),
)
def test_near_distance_to_a_line_is_accurate(lon: float, lat: float) -> None:
    near = query("near;maxDistance==1", LINE_REFERENCE)
    ours = near.distance(point(lon, lat))
    assert ours is not None
    expected = brute_force_distance(LINE_REFERENCE["coordinates"], lon, lat)
    # Within 0.1 % (the sampling of the brute force is ~15 m, so off by at most ~8 m).
    assert abs(ours - expected) <= 0.001 * expected + 8


# --- bbox pre-filter -----------------------------------------------------------------------


def test_bbox_by_georel() -> None:
    zone_bounds = (0.64, 47.34, 0.74, 47.44)
    for georel in ("within", "contains", "intersects", "equals", "overlaps"):
        assert query(georel, ZONE).bbox() == pytest.approx(zone_bounds)
    assert query("disjoint", ZONE).bbox() is None
    assert query("near;minDistance==10", ZONE).bbox() is None
    west, south, east, north = query("near;maxDistance==1000", point(*TOURS)).bbox()
    assert north - TOURS[1] == pytest.approx(KM_LAT, rel=1e-5)
    assert TOURS[1] - south == pytest.approx(KM_LAT, rel=1e-5)
    assert east - TOURS[0] == pytest.approx(KM_LON, rel=1e-5)
    assert TOURS[0] - west == pytest.approx(KM_LON, rel=1e-5)


def test_bbox_near_the_pole_spans_all_longitudes() -> None:
    west, south, east, north = query("near;maxDistance==5000", point(10, 89.99)).bbox()
    assert (west, east, north) == (-180.0, 180.0, 90.0)
    assert south == pytest.approx(89.99 - 5000 / METRES_PER_DEGREE)
    assert query("near;maxDistance==1e9", point(*TOURS)).bbox() == (-180.0, -90.0, 180.0, 90.0)


@FUZZ
@given(
    lon=st.floats(-180, 180),
    lat=st.floats(-89.9, 89.9),
    bearing=st.floats(0, 360),
    metres=st.floats(0, 2_000_000),
    fraction=st.floats(0, 0.999),
)
def test_bbox_holds_every_point_within_max_distance(
    lon: float, lat: float, bearing: float, metres: float, fraction: float
) -> None:
    near = query(f"near;maxDistance=={metres!r}", point(lon, lat))
    target = point(*destination(lon, lat, bearing, metres * fraction))
    if metres * (1 - fraction) > 0.001:  # clear of float noise in destination()
        assert near.matches(target)
    box = near.bbox()
    assert box is not None
    assert boxes_intersect(geometry_bbox(target), box)


GRID = st.integers(-4, 4).map(lambda i: round(i * 0.05, 2))


@st.composite
def grid_geometries(draw: st.DrawFn) -> dict:
    """Points, lines and rectangles on a 0.05° grid around Tours: equal, touching, nested…"""
    kind = draw(st.sampled_from(["Point", "LineString", "Polygon"]))
    x1, y1, x2, y2 = (draw(GRID) for _ in range(4))
    if kind == "Point":
        return point(TOURS[0] + x1, TOURS[1] + y1)
    if kind == "LineString":
        assume((x1, y1) != (x2, y2))
        return {
            "type": kind,
            "coordinates": [[TOURS[0] + x1, TOURS[1] + y1], [TOURS[0] + x2, TOURS[1] + y2]],
        }
    assume(x1 != x2 and y1 != y2)
    w, e = sorted((TOURS[0] + x1, TOURS[0] + x2))
    s, n = sorted((TOURS[1] + y1, TOURS[1] + y2))
    return polygon([[w, s], [e, s], [e, n], [w, n], [w, s]])


@FUZZ
@given(
    georel=st.sampled_from(GEORELS),
    metres=st.floats(0, 30_000),
    reference=grid_geometries(),
    target=grid_geometries(),
)
def test_bbox_prefilter_is_sound(georel: str, metres: float, reference: dict, target: dict) -> None:
    full = f"near;maxDistance=={metres!r}" if georel == "near" else georel
    parsed = query(full, reference)
    box = parsed.bbox()
    if box is not None and parsed.matches(target):
        assert boxes_intersect(geometry_bbox(target), box)


# --- stored geometries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("geometry", "bounds"),
    [
        (point(*TOURS), (0.69, 47.39, 0.69, 47.39)),
        (ZONE_WITH_HOLE, (0.64, 47.34, 0.74, 47.44)),
        (TWO_TOWNS, (0.67, 47.37, 1.0, 47.43)),
        ({"type": "GeometryCollection", "geometries": [point(0, 1), ACROSS]}, (0, 1, 0.8, 47.39)),
        ({"type": "Point", "coordinates": [0, 95]}, None),
        ({"type": "Circle", "coordinates": [0, 0]}, None),
        ("nope", None),
    ],
)
def test_geometry_bbox(geometry: Any, bounds: tuple | None) -> None:
    result = geometry_bbox(geometry)
    assert result == (None if bounds is None else pytest.approx(bounds))


def test_validate_geometry_accepts_the_seven_types() -> None:
    valid = [
        point(*TOURS),
        {"type": "MultiPoint", "coordinates": [[0.69, 47.39], [0.7, 47.4, 30]]},
        ACROSS,
        {"type": "MultiLineString", "coordinates": [ACROSS["coordinates"]]},
        ZONE_WITH_HOLE,
        TWO_TOWNS,
        {"type": "GeometryCollection", "geometries": [point(*TOURS), ZONE]},
        # Self-intersecting rings are stored: only the structure is checked.
        polygon([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]),
    ]
    for geometry in valid:
        assert validate_geometry(geometry) is geometry


@pytest.mark.parametrize(
    ("geometry", "message"),
    [
        ("POINT(0 0)", "must be a GeoJSON geometry object"),
        ({"coordinates": [0, 0]}, "unknown GeoJSON geometry type None"),
        ({"type": "point", "coordinates": [0, 0]}, "unknown GeoJSON geometry type 'point'"),
        ({"type": "Point"}, "needs a 'coordinates' member"),
        ({"type": "Point", "coordinates": [0, 91]}, "latitude 91 is outside"),
        ({"type": "Point", "coordinates": [-180.5, 0]}, "longitude -180.5 is outside"),
        ({"type": "Point", "coordinates": [0, False]}, "False is not a number"),
        ({"type": "Point", "coordinates": [0, 0, math.inf]}, "not a finite number"),
        ({"type": "LineString", "coordinates": [0, 0]}, "geometry.coordinates[0] must be a pos"),
        (polygon([[0, 0], [1, 0], [1, 1], [0, 1]]), "not a closed linear ring"),
        (polygon([[0, 0], [1, 0], [0, 0]]), "at least 4 position"),
        (polygon([[0, 0, 1], [1, 0], [1, 1], [0, 0, 2]]), "not a closed linear ring"),
        ({"type": "Polygon", "coordinates": []}, "non-empty array"),
        ({"type": "GeometryCollection", "geometries": []}, "non-empty 'geometries' array"),
        (
            {"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": 1}]},
            "geometry.geometries[0].coordinates must be a position",
        ),
    ],
)
def test_validate_geometry_errors(geometry: Any, message: str) -> None:
    with pytest.raises(InvalidGeometry, match=re.escape(message)):
        validate_geometry(geometry)


def test_validate_geometry_limits() -> None:
    nested: dict = point(*TOURS)
    for _ in range(20):
        nested = {"type": "GeometryCollection", "geometries": [nested]}
    with pytest.raises(InvalidGeometry, match="nested too deeply"):
        validate_geometry(nested)
    many = {"type": "MultiPoint", "coordinates": [[0, 0]] * 4}
    with pytest.raises(InvalidGeometry, match="too many positions"):
        validate_geometry(many, max_positions=3)
    assert validate_geometry(many, max_positions=4) is many


# --- fuzzing -------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.floats(-200, 200)
    | st.text(max_size=4)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=30,
)
NUMBER_TREES = st.recursive(
    st.floats(-200, 200) | st.integers(-200, 200),
    lambda children: st.lists(children, min_size=1, max_size=6),
    max_leaves=40,
)
TEXT_OR_NONE = st.none() | st.text()
VALID = ("near;maxDistance==1000", "Point", "[0.69,47.39]", "location")


def parse_or_syntax_error(*args: Any) -> None:
    try:
        result = parse_geoquery(*args)
    except GeoQuerySyntaxError as error:
        assert str(error)
    else:
        assert result is None or isinstance(result, GeoQuery)


@FUZZ
@given(slot=st.integers(0, 3), value=st.text())
def test_fuzz_one_text_input(slot: int, value: str) -> None:
    args = list(VALID)
    args[slot] = value
    parse_or_syntax_error(*args)


@FUZZ
@given(TEXT_OR_NONE, TEXT_OR_NONE, TEXT_OR_NONE, TEXT_OR_NONE)
def test_fuzz_all_text_inputs(georel: Any, geometry: Any, coordinates: Any, prop: Any) -> None:
    parse_or_syntax_error(georel, geometry, coordinates, prop)


@FUZZ
@given(
    georel=st.sampled_from(GEORELS).map(lambda g: "near;minDistance==5" if g == "near" else g),
    geometry=st.sampled_from(QUERY_GEOMETRIES),
    coordinates=NUMBER_TREES | JSON_VALUES,
    as_text=st.booleans(),
)
def test_fuzz_coordinates(georel: str, geometry: str, coordinates: Any, as_text: bool) -> None:
    if as_text:
        try:
            coordinates = orjson.dumps(coordinates).decode()
        except (TypeError, orjson.JSONEncodeError):
            coordinates = repr(coordinates)
    parse_or_syntax_error(georel, geometry, coordinates)


TARGETS = JSON_VALUES | st.fixed_dictionaries(
    {"type": st.sampled_from([*QUERY_GEOMETRIES, "GeometryCollection"])},
    optional={"coordinates": NUMBER_TREES | JSON_VALUES, "geometries": JSON_VALUES},
)
FUZZ_QUERIES = [
    query(georel, reference)
    for georel in ("near;maxDistance==5000", "near;minDistance==5000", *GEORELS[1:])
    for reference in (point(*TOURS), ZONE_WITH_HOLE, ACROSS)
]


@FUZZ
@given(target=TARGETS)
def test_fuzz_targets_never_raise(target: Any) -> None:
    for reference in FUZZ_QUERIES:
        assert reference.matches(target) in (True, False)
    box = geometry_bbox(target)
    assert box is None or len(box) == 4
    try:
        validate_geometry(target)
    except InvalidGeometry as error:
        assert str(error)
