"""Citizen reports of problems in public space, and Open311 GeoReport v2."""
