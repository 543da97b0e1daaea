"""Capability packages: each ``communs.<capability>`` may provide ``models``, ``api``,
``views``, ``admin`` and ``tasks`` modules, found here without a central list."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from communs.core.db import Database
    from communs.core.settings import Settings

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


class BackgroundService(Protocol):
    """A long-running part of ``communs serve`` (the notifier, the MQTT consumer…)."""

    name: str

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def background_services(settings: Settings, db: Database) -> list[BackgroundService]:
    """The services every capability's ``runtime`` module starts for these settings:
    its ``BACKGROUND`` factories, each answering a service or None (not configured)."""
    services = []
    for module in capability_modules("runtime"):
        for factory in getattr(module, "BACKGROUND", ()):
            service = factory(settings, db)
            if service is not None:
                services.append(service)
    return services
