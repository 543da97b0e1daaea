"""NGSI-LD geo-queries (ETSI GS CIM 009 v1.8, clause 4.10): parsing and evaluation.

A geo-query arrives as four strings in a GET query string (``georel``, ``geometry``,
``coordinates``, ``geoproperty``) or as the ``geoQ`` member of a POST
``/entityOperations/query`` body, where ``coordinates`` may already be a JSON array.
``parse_geoquery`` turns them into a ``GeoQuery`` or raises ``GeoQuerySyntaxError``, whatever
the input; ``GeoQuery.matches`` then tests an entity's GeoProperty value (a GeoJSON geometry)
and ``GeoQuery.bbox`` gives a box every matching geometry intersects, for an index pre-filter.

Topological relations (``within``, ``contains``, ``intersects``, ``disjoint``, ``equals``,
``overlaps``) follow OGC Simple Features on the longitude/latitude plane, the way PostGIS
evaluates ``geometry`` columns. ``near`` measures great-circle distances in metres on a sphere
of radius ``EARTH_RADIUS_M``: exact (haversine) between two points; otherwise the nearest pair
of points is found on a local equirectangular plane centred on the query geometry and its
great-circle length is taken. That plane is an affine image of longitude/latitude, so the pair
lies on both geometries and the distance is never under-estimated, which keeps ``bbox`` sound.
Geometries crossing the antimeridian are not unwrapped (point-to-point distances still wrap).

A ``GeoQuery`` is immutable and may be shared between threads: each thread gets its own
prepared copy of the reference geometry.
"""

from __future__ import annotations

import math
import re
import reprlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

import numpy as np
import orjson
import shapely
from shapely.errors import ShapelyError
from shapely.geometry.base import BaseGeometry

EARTH_RADIUS_M: Final = 6_371_008.8
METRES_PER_DEGREE: Final = EARTH_RADIUS_M * math.pi / 180
DEFAULT_GEOPROPERTY: Final = "location"
GEORELS: Final = ("near", "within", "contains", "intersects", "disjoint", "equals", "overlaps")
QUERY_GEOMETRIES: Final = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
)
GEOMETRY_TYPES: Final = (*QUERY_GEOMETRIES, "GeometryCollection")
MAX_COORDINATES_TEXT: Final = 100_000
MAX_QUERY_POSITIONS: Final = 10_000
MAX_GEOMETRY_POSITIONS: Final = 500_000
MAX_COLLECTION_DEPTH: Final = 8
MAX_GEOREL_TEXT: Final = 256

_DISTANCE = re.compile(r"(maxDistance|minDistance)==(.*)", re.DOTALL)
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_ATTRIBUTE_NAME = re.compile(r"[^\x00-\x20\x7f<>\"'=;()]{1,512}")
_GEOMETRY_NAMES = {name.lower(): name for name in QUERY_GEOMETRIES}
_ARRAY_TYPES = frozenset({list, tuple})
_NUMBER_TYPES = frozenset({int, float})
# Slack added to bbox() so that float rounding cannot make the pre-filter drop a match.
_BBOX_SLACK_DEG = 1e-9
_BBOX_SLACK_REL = 1e-6
_MIN_COS = 0.01

BBox = tuple[float, float, float, float]


class GeoQuerySyntaxError(ValueError):
    """A geo-query is incomplete or malformed (NGSI-LD: BadRequestData)."""


class InvalidGeometry(GeoQuerySyntaxError):
    """A GeoJSON geometry, in a geo-query or in a GeoProperty value, is malformed."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 4, 3, 30, 30


def _show(value: Any, limit: int = 40) -> str:
    """A short printable rendering of user input for error messages, safe on any value."""
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # e.g. an int beyond the int-to-str digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# --- GeoJSON coordinates -------------------------------------------------------------------


class _Reader:
    """Checks GeoJSON coordinates and builds the shapely geometry, within a position budget.

    Only the nesting each geometry type calls for is visited, so neither deep nesting nor
    very long arrays can exhaust the stack or the time spent. Altitudes are checked, then
    dropped: geo-queries are two-dimensional.
    """

    def __init__(self, max_positions: int) -> None:
        self.left = max_positions

    def build(self, kind: str, coords: Any, where: str = "coordinates") -> BaseGeometry:
        builder = _BUILDERS[kind]
        return builder(self, coords, where)

    def point(self, coords: Any, where: str) -> BaseGeometry:
        return shapely.Point(self.position(coords, where))

    def multipoint(self, coords: Any, where: str) -> BaseGeometry:
        return shapely.MultiPoint(self.positions(coords, where, minimum=1))

    def linestring(self, coords: Any, where: str) -> BaseGeometry:
        return shapely.LineString(self.positions(coords, where, minimum=2))

    def multilinestring(self, coords: Any, where: str) -> BaseGeometry:
        lines = self.parts(coords, where, lambda c, w: self.positions(c, w, minimum=2))
        return shapely.MultiLineString(lines)

    def polygon(self, coords: Any, where: str) -> BaseGeometry:
        shell, *holes = self.parts(coords, where, self.ring)
        return shapely.Polygon(shell, holes)

    def multipolygon(self, coords: Any, where: str) -> BaseGeometry:
        return shapely.MultiPolygon(self.parts(coords, where, self.polygon))

    def parts(self, coords: Any, where: str, read: Callable[[Any, str], Any]) -> list[Any]:
        if not isinstance(coords, list | tuple) or not coords:
            raise InvalidGeometry(f"{where} must be a non-empty array, got {_show(coords)}")
        if len(coords) > self.left:
            raise self.too_many()
        return [read(item, f"{where}[{i}]") for i, item in enumerate(coords)]

    def ring(self, coords: Any, where: str) -> np.ndarray:
        ring = self.positions(coords, where, minimum=4)
        if list(coords[0]) != list(coords[-1]):
            raise InvalidGeometry(
                f"{where} is not a closed linear ring: its first and last positions differ"
            )
        return ring

    def positions(self, coords: Any, where: str, minimum: int) -> np.ndarray:
        """An (n, 2) array of longitudes and latitudes."""
        if not isinstance(coords, list | tuple) or len(coords) < minimum:
            raise InvalidGeometry(
                f"{where} must be an array of at least {minimum} position(s), got {_show(coords)}"
            )
        if len(coords) > self.left:
            raise self.too_many()
        array = _fast_positions(coords)
        if array is None:  # something is off, or altitudes are mixed: check one by one
            return np.array([self.position(item, f"{where}[{i}]") for i, item in enumerate(coords)])
        self.left -= len(coords)
        return array

    def position(self, coords: Any, where: str) -> tuple[float, float]:
        if not isinstance(coords, list | tuple) or not 2 <= len(coords) <= 3:
            raise InvalidGeometry(
                f"{where} must be a position [longitude, latitude] or "
                f"[longitude, latitude, altitude], got {_show(coords)}"
            )
        self.left -= 1
        if self.left < 0:
            raise self.too_many()
        lon, lat, *_ = (_number(value, where) for value in coords)
        if not -180 <= lon <= 180:
            raise InvalidGeometry(f"{where}: longitude {lon:g} is outside -180..180")
        if not -90 <= lat <= 90:
            raise InvalidGeometry(f"{where}: latitude {lat:g} is outside -90..90")
        return lon, lat

    def too_many(self) -> InvalidGeometry:
        return InvalidGeometry("the geometry has too many positions")


_BUILDERS: dict[str, Callable[[_Reader, Any, str], BaseGeometry]] = {
    "Point": _Reader.point,
    "MultiPoint": _Reader.multipoint,
    "LineString": _Reader.linestring,
    "MultiLineString": _Reader.multilinestring,
    "Polygon": _Reader.polygon,
    "MultiPolygon": _Reader.multipolygon,
}


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidGeometry(f"{where}: {_show(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidGeometry(f"{where}: {_show(value)} is not a finite number")
    return number


def _fast_positions(coords: Sequence[Any]) -> np.ndarray | None:
    """The positions as an (n, 2) array if all are well-formed and in range, else None.

    The vectorised path for the common case: None sends the caller to the check position by
    position, which names the culprit.
    """
    if not {type(position) for position in coords} <= _ARRAY_TYPES:
        return None
    sizes = {len(position) for position in coords}
    if len(sizes) != 1 or not sizes <= {2, 3}:
        return None
    if not {type(value) for position in coords for value in position} <= _NUMBER_TYPES:
        return None
    try:
        array = np.array(coords, dtype=np.float64)
    except (OverflowError, ValueError):
        return None
    lon_ok = np.abs(array[:, 0]) <= 180
    lat_ok = np.abs(array[:, 1]) <= 90
    if not (np.isfinite(array).all() and lon_ok.all() and lat_ok.all()):
        return None
    return array[:, :2]


def _read_geometry(
    value: Any, reader: _Reader, where: str = "geometry", depth: int = 0
) -> BaseGeometry:
    """The shapely geometry of a GeoJSON geometry object (GeometryCollection included)."""
    if not isinstance(value, dict):
        raise InvalidGeometry(f"{where} must be a GeoJSON geometry object, got {_show(value)}")
    kind = value.get("type")
    if kind == "GeometryCollection":
        return _read_collection(value, reader, where, depth)
    if not isinstance(kind, str) or kind not in _BUILDERS:
        raise InvalidGeometry(
            f"{where}: unknown GeoJSON geometry type {_show(kind)}; "
            f"expected one of {', '.join(GEOMETRY_TYPES)}"
        )
    if "coordinates" not in value:
        raise InvalidGeometry(f"{where}: a {kind} needs a 'coordinates' member")
    return reader.build(kind, value["coordinates"], f"{where}.coordinates")


def _read_collection(value: dict, reader: _Reader, where: str, depth: int) -> BaseGeometry:
    if depth >= MAX_COLLECTION_DEPTH:
        raise InvalidGeometry(f"{where}: GeometryCollections are nested too deeply")
    members = value.get("geometries")
    if not isinstance(members, list) or not members:
        raise InvalidGeometry(f"{where}: a GeometryCollection needs a non-empty 'geometries' array")
    if len(members) > reader.left:
        raise reader.too_many()
    parts = [
        _read_geometry(member, reader, f"{where}.geometries[{i}]", depth + 1)
        for i, member in enumerate(members)
    ]
    return shapely.GeometryCollection(parts)


def _target_shape(value: Any) -> BaseGeometry | None:
    """The shapely geometry of a stored GeoProperty value, or None when it is not valid."""
    try:
        return _read_geometry(value, _Reader(MAX_GEOMETRY_POSITIONS))
    except (GeoQuerySyntaxError, ShapelyError, ValueError, TypeError):
        return None


def validate_geometry(geojson: Any, *, max_positions: int = MAX_GEOMETRY_POSITIONS) -> dict:
    """Check the GeoJSON geometry of a GeoProperty value and return it unchanged.

    The ``type`` must be one of the seven GeoJSON geometry types, coordinates must be nested
    as that type requires with finite numbers, longitudes in -180..180 and latitudes in
    -90..90, linear rings closed with at least four positions. Self-intersections are not
    rejected: real-world data has them and storing it does no harm.

    Raises:
        InvalidGeometry: with a message naming the offending member.
    """
    if _plain_point(geojson) is None:
        _read_geometry(geojson, _Reader(max_positions))
    return geojson


def geometry_bbox(geojson: Any) -> BBox | None:
    """The bounds (min_lon, min_lat, max_lon, max_lat) of a GeoJSON geometry, None if invalid."""
    point = _plain_point(geojson)
    if point is not None:
        return point[0], point[1], point[0], point[1]
    shape = _target_shape(geojson)
    return None if shape is None else _bounds(shape)


def _plain_point(geojson: Any) -> tuple[float, float] | None:
    """A valid 2D Point's position, checked without building a geometry (the common case);
    None for anything else, which then takes the general path."""
    if not isinstance(geojson, dict) or geojson.get("type") != "Point":
        return None
    position = geojson.get("coordinates")
    if not isinstance(position, list) or len(position) != 2:
        return None
    lon, lat = position
    if type(lon) not in (int, float) or type(lat) not in (int, float):
        return None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):  # also false for NaN
        return None
    return float(lon), float(lat)


def _bounds(shape: BaseGeometry) -> BBox:
    min_lon, min_lat, max_lon, max_lat = shape.bounds
    return float(min_lon), float(min_lat), float(max_lon), float(max_lat)


# --- distances -----------------------------------------------------------------------------


def haversine(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in metres between two longitude/latitude points."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    half_dphi = (phi2 - phi1) / 2
    half_dlambda = math.radians(lon2 - lon1) / 2
    a = math.sin(half_dphi) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(half_dlambda) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True)
class _LocalPlane:
    """An equirectangular plane, in metres, centred on (lon0, lat0).

    It is an affine map of longitude/latitude, so it keeps edges straight: the nearest points
    of two geometries found on it lie on those geometries, and their great-circle distance is
    a true distance between the geometries (at worst slightly above the minimum).
    """

    lon0: float
    lat0: float
    kx: float

    @classmethod
    def centred_on(cls, shape: BaseGeometry) -> _LocalPlane:
        min_lon, min_lat, max_lon, max_lat = shape.bounds
        lat0 = (min_lat + max_lat) / 2
        kx = METRES_PER_DEGREE * max(math.cos(math.radians(lat0)), _MIN_COS)
        return cls((min_lon + max_lon) / 2, lat0, kx)

    def project(self, shape: BaseGeometry) -> BaseGeometry:
        offset = np.array([self.lon0, self.lat0])
        scale = np.array([self.kx, METRES_PER_DEGREE])
        return shapely.transform(shape, lambda xy: (xy - offset) * scale)

    def unproject(self, x: float, y: float) -> tuple[float, float]:
        return self.lon0 + x / self.kx, self.lat0 + y / METRES_PER_DEGREE

    def distance(self, projected: BaseGeometry, target: BaseGeometry) -> float:
        """Great-circle distance between a geometry already projected and a lon/lat one."""
        (x1, y1), (x2, y2) = shapely.shortest_line(projected, self.project(target)).coords
        return haversine(*self.unproject(x1, y1), *self.unproject(x2, y2))


# --- georel, geometry and coordinates parameters -------------------------------------------


def _parse_georel(text: Any) -> tuple[str, float | None, float | None]:
    """``near;maxDistance==N`` and friends → (relation, max_distance, min_distance)."""
    if not isinstance(text, str):
        raise GeoQuerySyntaxError(f"georel must be a string, got {_show(text)}")
    if len(text) > MAX_GEOREL_TEXT:
        raise GeoQuerySyntaxError("georel is too long")
    relation, *modifiers = text.strip().split(";")
    if relation not in GEORELS:
        raise GeoQuerySyntaxError(
            f"unknown georel {_show(relation)}; expected one of {', '.join(GEORELS)}"
        )
    if relation != "near":
        if modifiers:
            raise GeoQuerySyntaxError(f"georel {relation!r} takes no modifier, got {_show(text)}")
        return relation, None, None
    if len(modifiers) != 1:
        raise GeoQuerySyntaxError(
            "georel 'near' needs exactly one modifier: near;maxDistance==<metres> "
            "or near;minDistance==<metres>"
        )
    return _parse_near_modifier(modifiers[0])


def _parse_near_modifier(modifier: str) -> tuple[str, float | None, float | None]:
    match = _DISTANCE.fullmatch(modifier.strip())
    if match is None:
        raise GeoQuerySyntaxError(
            f"invalid near modifier {_show(modifier)}; expected maxDistance==<metres> "
            "or minDistance==<metres>"
        )
    name, value = match.groups()
    distance = _parse_distance(value.strip(), name)
    if name == "maxDistance":
        return "near", distance, None
    return "near", None, distance


def _parse_distance(text: str, name: str) -> float:
    distance = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not math.isfinite(distance):
        raise GeoQuerySyntaxError(
            f"invalid {name} {_show(text)}: it must be a non-negative number of metres"
        )
    return distance


def _parse_geometry_name(name: Any) -> str:
    """The canonical GeoJSON type name; case is forgiven (``point`` → ``Point``)."""
    if not isinstance(name, str):
        raise GeoQuerySyntaxError(f"geometry must be a string, got {_show(name)}")
    canonical = _GEOMETRY_NAMES.get(name.strip().lower())
    if canonical is None:
        raise GeoQuerySyntaxError(
            f"unknown geometry {_show(name)}; expected one of {', '.join(QUERY_GEOMETRIES)}"
        )
    return canonical


def _parse_coordinates(coordinates: Any) -> list:
    """The coordinates as a JSON array, from text (query string) or a decoded JSON body."""
    if isinstance(coordinates, str):
        coordinates = _decode_coordinates(coordinates)
    if isinstance(coordinates, tuple):
        coordinates = list(coordinates)
    if not isinstance(coordinates, list):
        raise GeoQuerySyntaxError(
            f"coordinates must be a JSON array such as [0.69,47.39], got {_show(coordinates)}"
        )
    return coordinates


def _decode_coordinates(text: str) -> Any:
    if len(text) > MAX_COORDINATES_TEXT:
        raise GeoQuerySyntaxError(
            f"coordinates are too long (more than {MAX_COORDINATES_TEXT} characters)"
        )
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, ValueError, TypeError) as error:
        raise GeoQuerySyntaxError(
            f"coordinates are not a valid JSON array such as [0.69,47.39]: {_show(text)}"
        ) from error


def _parse_geoproperty(name: Any) -> str:
    if name is None:
        return DEFAULT_GEOPROPERTY
    if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name):
        raise GeoQuerySyntaxError(f"geoproperty must be an attribute name, got {_show(name)}")
    return name


def _query_shape(geometry: Any) -> BaseGeometry:
    """The shapely geometry of a query's reference geometry, which must also be OGC-valid."""
    if not isinstance(geometry, dict) or geometry.get("type") not in QUERY_GEOMETRIES:
        raise InvalidGeometry(
            f"a geo-query geometry must be one of {', '.join(QUERY_GEOMETRIES)}, "
            f"got {_show(geometry)}"
        )
    kind = geometry["type"]
    shape = _Reader(MAX_QUERY_POSITIONS).build(kind, geometry.get("coordinates"))
    if not shapely.is_valid(shape):
        reason = shapely.is_valid_reason(shape)
        raise InvalidGeometry(f"coordinates do not form a valid {kind}: {reason}")
    return shape


def parse_geoquery(
    georel: str | None,
    geometry: str | None,
    coordinates: str | list | None,
    geoproperty: str | None = None,
) -> GeoQuery | None:
    """Parse the geo-query parameters of a GET query string or of a POST ``geoQ`` object.

    Args:
        georel: ``near;maxDistance==<metres>``, ``near;minDistance==<metres>``, ``within``,
            ``contains``, ``intersects``, ``disjoint``, ``equals`` or ``overlaps``.
        geometry: a GeoJSON geometry type other than GeometryCollection (any letter case).
        coordinates: a JSON array, as text (URL-decoded) or already decoded.
        geoproperty: the GeoProperty to test, as given (not expanded); ``location`` if None.

    Returns:
        None when none of georel, geometry and coordinates is given, else the GeoQuery.

    Raises:
        GeoQuerySyntaxError: for any incomplete or malformed input, and for nothing else.
    """
    given = {"georel": georel, "geometry": geometry, "coordinates": coordinates}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == len(given):
        return None
    if missing:
        raise GeoQuerySyntaxError(
            f"incomplete geo-query: missing {' and '.join(missing)}; "
            "georel, geometry and coordinates must be given together"
        )
    relation, max_distance, min_distance = _parse_georel(georel)
    shape_type = _parse_geometry_name(geometry)
    return GeoQuery(
        georel=relation,
        max_distance=max_distance,
        min_distance=min_distance,
        geometry={"type": shape_type, "coordinates": _parse_coordinates(coordinates)},
        geoproperty=_parse_geoproperty(geoproperty),
    )


# --- the query -----------------------------------------------------------------------------


def _within(query: BaseGeometry, target: BaseGeometry) -> bool:
    return bool(shapely.contains(query, target))


def _contains(query: BaseGeometry, target: BaseGeometry) -> bool:
    return bool(shapely.within(query, target))


def _intersects(query: BaseGeometry, target: BaseGeometry) -> bool:
    return bool(shapely.intersects(query, target))


def _disjoint(query: BaseGeometry, target: BaseGeometry) -> bool:
    return bool(shapely.disjoint(query, target))


def _equals(query: BaseGeometry, target: BaseGeometry) -> bool:
    return bool(shapely.equals(target, query))


def _overlaps(query: BaseGeometry, target: BaseGeometry) -> bool:
    return bool(shapely.overlaps(query, target))


# Each predicate reads "the target <georel> the query geometry".
_PREDICATES: dict[str, Callable[[BaseGeometry, BaseGeometry], bool]] = {
    "within": _within,
    "contains": _contains,
    "intersects": _intersects,
    "disjoint": _disjoint,
    "equals": _equals,
    "overlaps": _overlaps,
}


@dataclass(frozen=True)
class GeoQuery:
    """A parsed NGSI-LD geo-query.

    Attributes:
        georel: the relation, without modifier: one of ``GEORELS``.
        max_distance: metres, for ``near;maxDistance``, else None.
        min_distance: metres, for ``near;minDistance``, else None.
        geometry: the reference geometry as GeoJSON (``type`` and ``coordinates``).
        geoproperty: the GeoProperty to test, as given by the client (not expanded).
    """

    georel: str
    max_distance: float | None
    min_distance: float | None
    geometry: dict = field(hash=False)
    geoproperty: str = DEFAULT_GEOPROPERTY
    _shape: BaseGeometry = field(init=False, repr=False, compare=False, hash=False)
    _per_thread: threading.local = field(
        init=False, repr=False, compare=False, hash=False, default_factory=threading.local
    )

    def __post_init__(self) -> None:
        self._check_relation()
        object.__setattr__(self, "_shape", _query_shape(self.geometry))

    def _check_relation(self) -> None:
        if self.georel not in GEORELS:
            raise GeoQuerySyntaxError(f"unknown georel {_show(self.georel)}")
        distances = [d for d in (self.max_distance, self.min_distance) if d is not None]
        expected = 1 if self.georel == "near" else 0
        if len(distances) != expected:
            raise GeoQuerySyntaxError(
                "georel 'near' needs exactly one of maxDistance and minDistance, "
                "and other georels none"
            )
        for distance in distances:
            number = not isinstance(distance, bool) and isinstance(distance, int | float)
            if not number or not 0 <= distance < math.inf:
                raise GeoQuerySyntaxError("a distance must be a non-negative number of metres")

    def matches(self, target: Any) -> bool:
        """Whether a GeoProperty value (a GeoJSON geometry) satisfies the query.

        An invalid or unreadable target never matches; this never raises.
        """
        shape = _target_shape(target)
        if shape is None:
            return False
        try:
            if self.georel == "near":
                return self._near(shape)
            return _PREDICATES[self.georel](self._prepared(), shape)
        except (ShapelyError, ValueError, TypeError, ArithmeticError):
            return False

    def distance(self, target: Any) -> float | None:
        """Great-circle distance in metres from a GeoJSON geometry, None if it is invalid."""
        shape = _target_shape(target)
        if shape is None:
            return None
        try:
            return self._distance_to(shape)
        except (ShapelyError, ValueError, TypeError, ArithmeticError):
            return None

    def bbox(self) -> BBox | None:
        """A box (min_lon, min_lat, max_lon, max_lat) that every matching target intersects.

        None when no such box exists short of the whole world: ``disjoint`` and
        ``near;minDistance``.
        """
        return self._bbox

    def to_geoq(self) -> dict[str, Any]:
        """The query as an NGSI-LD ``geoQ`` object (e.g. to render a subscription)."""
        georel = self.georel
        for name, value in (("maxDistance", self.max_distance), ("minDistance", self.min_distance)):
            if value is not None:
                georel = f"near;{name}=={_format_distance(value)}"
        return {
            "geometry": self.geometry["type"],
            "coordinates": self.geometry["coordinates"],
            "georel": georel,
            "geoproperty": self.geoproperty,
        }

    def _near(self, shape: BaseGeometry) -> bool:
        distance = self._distance_to(shape)
        if self.max_distance is not None:
            return distance <= self.max_distance
        return self.min_distance is not None and distance >= self.min_distance

    def _prepared(self) -> BaseGeometry:
        """The query geometry, prepared for fast predicates, one copy per thread.

        GEOS prepared geometries build their indexes lazily and are not thread-safe, while
        shapely releases the GIL: a GeoQuery may be shared, so each thread prepares its own.
        """
        prepared = getattr(self._per_thread, "shape", None)
        if prepared is None:
            prepared = shapely.from_wkb(shapely.to_wkb(self._shape))
            shapely.prepare(prepared)
            self._per_thread.shape = prepared
        return prepared

    def _distance_to(self, shape: BaseGeometry) -> float:
        if shapely.intersects(self._prepared(), shape):
            return 0.0
        query = self._shape
        if isinstance(query, shapely.Point) and isinstance(shape, shapely.Point):
            return haversine(query.x, query.y, shape.x, shape.y)
        return self._plane.distance(self._projected, shape)

    @cached_property
    def _plane(self) -> _LocalPlane:
        return _LocalPlane.centred_on(self._shape)

    @cached_property
    def _projected(self) -> BaseGeometry:
        return self._plane.project(self._shape)

    @cached_property
    def _bbox(self) -> BBox | None:
        if self.georel == "disjoint" or self.min_distance is not None:
            return None
        bounds = _bounds(self._shape)
        if self.max_distance is None:
            return bounds
        return _grow(bounds, self.max_distance)


def _format_distance(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _grow(bounds: BBox, metres: float) -> BBox:
    """The bounds grown to hold every point within ``metres`` (great circle) of the box."""
    min_lon, min_lat, max_lon, max_lat = bounds
    angle = metres / EARTH_RADIUS_M * (1 + _BBOX_SLACK_REL) + math.radians(_BBOX_SLACK_DEG)
    dlat = math.degrees(angle)
    south, north = min_lat - dlat, max_lat + dlat
    if south <= -90 or north >= 90 or angle >= math.pi / 2:
        return -180.0, max(south, -90.0), 180.0, min(north, 90.0)
    # Farthest longitude reachable from latitude phi: asin(sin(angle) / cos(phi)).
    phi = math.radians(max(abs(min_lat), abs(max_lat)))
    dlon = math.degrees(math.asin(min(1.0, math.sin(angle) / math.cos(phi))))
    west, east = min_lon - dlon, max_lon + dlon
    if west < -180 or east > 180:
        west, east = -180.0, 180.0
    return west, south, east, north
