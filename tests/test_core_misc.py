import asyncio
import json
import logging

from conftest import make_commune

from communs.core import tenancy
from communs.core.events import Event, InProcessBus
from communs.core.logs import JsonLines


def test_tenant_helpers_resolve_slug_and_insee_and_nothing_else(db):
    alpha = make_commune(db, "alpha", "37001")
    make_commune(db, "beta", "37002")
    with db.read() as session:
        assert tenancy.commune_for_ngsild_tenant(session, "alpha").id == alpha.id
        assert tenancy.commune_for_ngsild_tenant(session, "37001").id == alpha.id
        assert tenancy.commune_for_ngsild_tenant(session, None, default_slug="alpha").id == alpha.id
        assert tenancy.commune_for_ngsild_tenant(session, "gamma") is None
        assert tenancy.commune_for_jurisdiction(session, "alpha.example.org").id == alpha.id
        assert tenancy.commune_for_jurisdiction(session, "37002").slug == "beta"
        assert tenancy.commune_for_jurisdiction(session, "") is None


def test_in_process_bus_delivers_by_pattern_and_survives_a_failing_handler():
    bus = InProcessBus()
    received: list[str] = []

    async def async_handler(event: Event) -> None:
        received.append(f"async:{event.topic}")

    def failing(event: Event) -> None:
        raise RuntimeError("handler bug")

    bus.subscribe("reports.*", async_handler)
    bus.subscribe("reports.*", failing)
    unsubscribe = bus.subscribe("*", lambda event: received.append(f"all:{event.topic}"))
    asyncio.run(bus.publish(Event("reports.created", {"id": 1}, commune_id=1)))
    unsubscribe()
    asyncio.run(bus.publish(Event("hub.entity.updated")))
    assert received == ["async:reports.created", "all:reports.created"]


def test_json_log_lines():
    record = logging.LogRecord(
        "communs.test", logging.WARNING, __file__, 1, "job %s failed", (7,), None
    )
    line = json.loads(JsonLines().format(record))
    assert line["level"] == "warning" and line["message"] == "job 7 failed"
    assert line["logger"] == "communs.test"
