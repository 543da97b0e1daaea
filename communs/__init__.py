"""Communs: the open platform of the shared smart city."""

__version__ = "0.1.0"
