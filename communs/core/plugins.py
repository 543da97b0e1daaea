"""Capability packages: each ``communs.<capability>`` may provide ``models``, ``api``,
``views``, ``admin`` and ``tasks`` modules, found here without a central list."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import communs


def capability_packages() -> list[str]:
    return [info.name for info in pkgutil.iter_modules(communs.__path__, "communs.") if info.ispkg]


def capability_modules(module_name: str) -> list[ModuleType]:
    """``communs.<capability>.<module_name>`` for every capability that has one."""
    found = []
    for package in capability_packages():
        qualified = f"{package}.{module_name}"
        try:
            found.append(importlib.import_module(qualified))
        except ModuleNotFoundError as error:
            if error.name != qualified:
                raise
    return found


def load_job_handlers() -> None:
    """Register every capability's job handlers (``tasks`` modules, and core e-mail)."""
    importlib.import_module("communs.core.mail")
    capability_modules("tasks")
