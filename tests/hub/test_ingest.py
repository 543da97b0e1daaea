"""MQTT ingestion: topics and payloads parsed, readings stored through the single
writer, dead letters, tenancy, counters, a consumer killed mid-batch, scale-out by
shared subscription. End-to-end tests use the real broker of COMMUNS_TEST_MQTT_URL."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import orjson
import paho.mqtt.client as paho
import pytest
from conftest import login, make_commune, make_instance_admin
from hub.test_contexts import run_cli
from live_server import log_tail, serve_process
from sqlalchemy import create_engine, text

from communs.core.settings import Settings
from communs.hub import devices, mqtt
from communs.hub.devices import DeviceMapping
from communs.hub.ingest import (
    Broker,
    IngestService,
    Parsed,
    Reading,
    Rejected,
    TopicParts,
    parse_message,
    parse_topic,
    store_batch,
)

VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
SENSOR_MAPPING = DeviceMapping("TemperatureSensor", "temperature", "v", "t", "CEL")
TIMEOUT = 30.0


# ---------------------------------------------------------------- parsing


def test_topics_give_commune_type_and_entity_id():
    assert parse_topic("communs/alpha/Streetlight/sl-1") == TopicParts(
        "alpha", "Streetlight", "urn:ngsi-ld:Streetlight:sl-1"
    )
    assert parse_topic("a/b/37001/Sensor/urn:ngsi-ld:Sensor:x", "a/b") == TopicParts(
        "37001", "Sensor", "urn:ngsi-ld:Sensor:x"
    )
    for wrong in ("communs/alpha/Sensor", "communs/alpha//x", "other/alpha/Sensor/x"):
        with pytest.raises(Rejected, match="topic must be"):
            parse_topic(wrong)


PARTS = TopicParts("alpha", "Sensor", "urn:ngsi-ld:Sensor:s1")


def test_normalized_concise_and_key_values_payloads():
    normalized = parse_message(
        PARTS,
        b'{"temperature": {"type": "Property", "value": 21, "observedAt": "2026-11-22T09:00:00Z"}}',
        None,
    )
    assert normalized["id"] == PARTS.entity_id
    assert normalized["type"] == [VOCAB + "Sensor"]
    assert normalized[VOCAB + "temperature"] == [
        {"type": "Property", "value": 21, "observedAt": "2026-11-22T09:00:00Z"}
    ]
    key_values = parse_message(PARTS, b'{"temperature": 21.5, "roadName": "ok"}', None)
    assert key_values[VOCAB + "temperature"] == [{"type": "Property", "value": 21.5}]
    assert key_values[VOCAB + "roadName"] == [{"type": "Property", "value": "ok"}]
    concise = parse_message(PARTS, b'{"owner": {"object": "urn:ngsi-ld:Person:1"}}', None)
    assert concise[VOCAB + "owner"][0]["type"] == "Relationship"
    same_id = parse_message(PARTS, b'{"id": "urn:ngsi-ld:Sensor:s1", "type": "Sensor"}', None)
    assert set(same_id) == {"id", "type"}


def test_device_payloads_follow_their_mapping():
    mapped = parse_message(
        PARTS, b'{"v": 23.5, "t": "2026-11-22T10:00:00+01:00", "battery": 80}', SENSOR_MAPPING
    )
    assert mapped[VOCAB + "temperature"] == [
        {
            "type": "Property",
            "value": 23.5,
            "observedAt": "2026-11-22T10:00:00+01:00",
            "unitCode": "CEL",
        }
    ]
    assert VOCAB + "battery" not in mapped
    epoch = parse_message(PARTS, b'{"v": 1, "t": 1795338000}', SENSOR_MAPPING)
    assert epoch[VOCAB + "temperature"][0]["observedAt"] == "2026-11-22T09:00:00.000Z"
    bare = parse_message(PARTS, b"19.25", SENSOR_MAPPING)
    assert bare[VOCAB + "temperature"] == [{"type": "Property", "value": 19.25, "unitCode": "CEL"}]
    untimed = DeviceMapping("Meter", "https://example.org/volume", "m3", None, None)
    assert parse_message(PARTS, b'{"m3": 4, "t": "x"}', untimed) == {
        "id": PARTS.entity_id,
        "type": [VOCAB + "Sensor"],
        "https://example.org/volume": [{"type": "Property", "value": 4}],
    }


@pytest.mark.parametrize(
    ("payload", "mapping", "reason"),
    [
        (b"{not json", None, "payload is not JSON"),
        (b"[1, 2]", None, "payload must be a JSON object"),
        (b"\xff\xfe", None, "payload is not JSON"),
        (b'{"@context": "https://x.example/c.jsonld", "a": 1}', None, "@context is not supported"),
        (b'{"id": "urn:ngsi-ld:Sensor:other", "a": 1}', None, "differs from the topic"),
        (b'{"type": "Streetlight", "a": 1}', None, "differs from the topic"),
        (b'{"a": {"type": "Property", "value": null}}', None, "invalid payload"),
        (b'{"a": {"type": "Property", "value": 1, "observedAt": "noon"}}', None, "ISO 8601"),
        (b'{"value": 3}', SENSOR_MAPPING, "lacks 'v'"),
        (b'{"v": 3, "t": "yesterday"}', SENSOR_MAPPING, "ISO 8601"),
        (b'{"v": 3, "t": 1e300}', SENSOR_MAPPING, "out of range"),
        (b"null", SENSOR_MAPPING, "device value must be"),
    ],
)
def test_invalid_payloads_are_rejected_with_a_reason(payload, mapping, reason):
    with pytest.raises(Rejected, match=reason):
        parse_message(PARTS, payload, mapping)


def test_a_topic_that_names_no_valid_entity_is_rejected():
    with pytest.raises(Rejected, match="invalid topic"):
        parse_message(TopicParts("alpha", 'Bad"Type', "urn:ngsi-ld:x:1"), b"{}", None)
    with pytest.raises(Rejected, match="invalid topic"):
        parse_message(TopicParts("alpha", "Sensor", "urn:" + "x" * 300), b"{}", None)


def test_broker_settings():
    settings = Settings(mqtt_url="mqtts://dev%40x:s%3Acret@broker.example", mqtt_client_id="c1")
    broker = Broker.from_settings(settings)
    assert (broker.host, broker.port, broker.tls) == ("broker.example", 8883, True)
    assert (broker.username, broker.password) == ("dev@x", "s:cret")
    assert broker.topic_filter == "communs/+/+/+"
    shared = Broker.from_settings(
        settings.with_overrides(mqtt_share_group="ingest", mqtt_topic_prefix="city/data")
    )
    assert shared.topic_filter == "$share/ingest/city/data/+/+/+"
    with pytest.raises(ValueError, match="COMMUNS_MQTT_URL"):
        Broker.from_settings(Settings(mqtt_url="http://broker"))


def test_every_reading_of_a_new_entity_is_recorded(hub, db):
    """Several readings of an entity unknown before the batch are all in its history."""
    commune_id = _commune_id(db, "alpha")
    readings = [
        parse_message(PARTS, orjson.dumps({"level": {"value": n, "observedAt": at(n)}}), None)
        for n in range(3)
    ]
    batch = Parsed([Reading(commune_id, entity, "t", b"") for entity in readings])
    db.write(store_batch, batch)
    found = hub.get(f"/temporal/entities/{PARTS.entity_id}", params={"attrs": "level"}).json()
    assert [i["value"] for i in found["level"]] == [0, 1, 2]


def at(minute: int) -> str:
    return f"2026-11-22T10:{minute:02d}:00Z"


# ---------------------------------------------------------------- the MQTT client


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    abort = close


def publish_packet(
    topic: str, payload: bytes, qos: int, mid: int, properties: bytes = b""
) -> bytes:
    body = mqtt.text(topic) + (mid.to_bytes(2, "big") if qos else b"")
    body += mqtt.varint(len(properties)) + properties + payload
    return mqtt.packet(0x30 | (qos << 1), body)


def test_variable_byte_integers():
    for value in (0, 127, 128, 16_383, 16_384, 268_435_455):
        encoded = mqtt.varint(value)
        assert mqtt.read_varint(encoded + b"rest", 0) == (value, len(encoded))
    assert mqtt.read_varint(b"\x80\x80", 0)[0] == -1  # ends inside the integer


def test_publish_packets_are_parsed_across_reads_and_acknowledged_together():
    client = mqtt.Subscriber("broker", 1883, "c")
    transport = FakeTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    expiry = b"\x01\x01\x02\x00\x00\x00\x3c"  # payload format indicator, message expiry
    stream = (
        publish_packet("communs/a/T/1", b'{"v": 1}', 1, 7)
        + publish_packet("communs/a/T/2", b"x" * 300, 0, 0)
        + publish_packet("communs/a/T/é", b"[]", 1, 65_535, expiry)
    )
    for cut in range(0, len(stream), 5):  # every split of the stream parses the same
        client.data_received(stream[cut : cut + 5])
    messages = list(client.messages)
    assert [(m.topic, m.payload, m.qos, m.mid) for m in messages] == [
        ("communs/a/T/1", b'{"v": 1}', 1, 7),
        ("communs/a/T/2", b"x" * 300, 0, 0),
        ("communs/a/T/é", b"[]", 1, 65_535),
    ]
    client.ack(messages)
    assert transport.written == [b"\x40\x02\x00\x07\x40\x02\xff\xff"]


def test_a_malformed_packet_drops_the_connection():
    client = mqtt.Subscriber("broker", 1883, "c")
    transport = FakeTransport()
    client.connection_made(transport)  # type: ignore[arg-type]
    client.data_received(b"\x32\x03\x00\x09a")  # topic longer than the packet
    assert transport.closed
    with pytest.raises(mqtt.MqttError):
        asyncio.run(client.batch(10))


def test_a_connection_the_broker_refuses_is_an_error(mqtt_url):
    parts = urlsplit(mqtt_url)

    async def connect() -> None:
        # MQTT 5: a Receive Maximum of 0 is a protocol error
        async with mqtt.Subscriber(parts.hostname, parts.port or 1883, "c", receive_maximum=0):
            pass

    with pytest.raises(mqtt.MqttError, match="refused|lost"):
        asyncio.run(connect())


def test_an_unreachable_broker_is_retried_until_stopped(db, settings, caplog):
    config = settings.with_overrides(mqtt_url="mqtt://127.0.0.1:1", mqtt_client_id="c")
    service = IngestService(Broker.from_settings(config), db)

    async def scenario() -> None:
        task = asyncio.create_task(service.run())
        await asyncio.sleep(1.0)
        service.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) >= 2 and not service.counters.connected


# ---------------------------------------------------------------- against the broker


def broker_settings(settings: Settings, mqtt_url: str, **extra: object) -> Settings:
    """Settings of a consumer on a topic prefix of its own (tests share the broker)."""
    extra.setdefault("mqtt_topic_prefix", f"test-{uuid.uuid4().hex[:12]}")
    extra.setdefault("mqtt_client_id", f"communs-test-{uuid.uuid4().hex[:12]}")
    return settings.with_overrides(mqtt_url=mqtt_url, mqtt_session_expiry=120, **extra)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def publish_all(mqtt_url: str, messages: list[tuple[str, bytes]]) -> None:
    parts = urlsplit(mqtt_url)
    async with aiomqtt.Client(parts.hostname or "127.0.0.1", parts.port or 1883) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


async def consume(
    services: list[IngestService],
    publish: Callable[[], Awaitable[None]],
    done: Callable[[], bool],
) -> None:
    """Run the consumers, publish once they are subscribed, stop them once ``done``."""
    tasks = [asyncio.create_task(service.run()) for service in services]
    try:
        await wait_until(lambda: all(s.counters.connected for s in services), "subscription")
        await publish()
        await wait_until(done, "the messages to be stored or rejected")
    finally:
        for service in services:
            service.stop()
        await asyncio.gather(*tasks)


def run_consumer(settings: Settings, db, messages: list[tuple[str, bytes]]) -> IngestService:
    service = IngestService(Broker.from_settings(settings), db)
    counters = service.counters

    def done() -> bool:
        return counters.stored + counters.rejected >= len(messages)

    asyncio.run(consume([service], lambda: publish_all(settings.mqtt_url, messages), done))
    return service


def _commune_id(db, slug: str) -> int:
    from communs.core.service import commune_by_slug

    with db.read() as session:
        return commune_by_slug(session, slug).id


def test_readings_are_stored_with_their_history(hub, db, settings, mqtt_url):
    config = broker_settings(settings, mqtt_url)
    db.write(devices.set_mapping, _commune_id(db, "alpha"), SENSOR_MAPPING)
    prefix = config.mqtt_topic_prefix
    sensor = "urn:ngsi-ld:TemperatureSensor:t1"
    messages = [
        (f"{prefix}/alpha/Streetlight/sl1", b'{"powerState": {"type": "Property", "value": "on"}}'),
        (
            f"{prefix}/37001/WeatherObserved/urn:ngsi-ld:WeatherObserved:w1",
            b'{"temperature": 12.5, "relativeHumidity": 0.8}',
        ),
        (f"{prefix}/alpha/TemperatureSensor/t1", b'{"v": 23.5, "t": "2026-11-22T10:00:00+01:00"}'),
        (f"{prefix}/alpha/TemperatureSensor/t1", b'{"v": 24.0, "t": "2026-11-22T10:05:00+01:00"}'),
        (f"{prefix}/alpha/Streetlight/sl1", b'{"powerState": "off"}'),
    ]
    service = run_consumer(config, db, messages)
    assert service.snapshot() | {"batches": 0} == {
        "connected": False,
        "received": 5,
        "stored": 5,
        "rejected": 0,
        "batches": 0,
    }
    light = hub.get("/entities/urn:ngsi-ld:Streetlight:sl1").json()
    assert light["type"] == "Streetlight" and light["powerState"]["value"] == "off"
    weather = hub.get("/entities/urn:ngsi-ld:WeatherObserved:w1", params={"options": "keyValues"})
    assert weather.json()["temperature"] == 12.5
    reading = hub.get(f"/entities/{sensor}").json()["temperature"]
    assert (reading["value"], reading["unitCode"]) == (24.0, "CEL")
    history = hub.get(f"/temporal/entities/{sensor}", params={"attrs": "temperature"}).json()
    assert [(i["value"], i["observedAt"]) for i in history["temperature"]] == [
        (23.5, "2026-11-22T09:00:00Z"),
        (24.0, "2026-11-22T09:05:00Z"),
    ]
    lights = hub.get("/temporal/entities/urn:ngsi-ld:Streetlight:sl1").json()
    assert [i["value"] for i in lights["powerState"]] == ["on", "off"]


def test_invalid_messages_are_dead_lettered_and_the_next_one_stored(hub, db, settings, mqtt_url):
    config = broker_settings(settings, mqtt_url)
    prefix = config.mqtt_topic_prefix
    bad = [
        (f"{prefix}/alpha/Sensor/s1", b"{oops"),
        (f"{prefix}/alpha/Sensor/s1", b'{"level": {"value": 1, "observedAt": "noon"}}'),
        (f"{prefix}/alpha//s1", b'{"level": 1}'),
        (f"{prefix}/nowhere/Sensor/s1", b'{"level": 1}'),
    ]
    good = (f"{prefix}/alpha/Sensor/s1", b'{"level": 7}')
    service = run_consumer(config, db, [*bad, good])
    assert (service.counters.stored, service.counters.rejected) == (1, 4)
    assert hub.get("/entities/urn:ngsi-ld:Sensor:s1").json()["level"]["value"] == 7
    with db.read() as session:
        of_alpha = devices.list_rejections(session, _commune_id(db, "alpha"))
        of_nobody = devices.list_rejections(session, None)
    assert [(r.payload, r.reason.split(":")[0]) for r in reversed(of_alpha)] == [
        ("{oops", "payload is not JSON"),
        ('{"level": {"value": 1, "observedAt": "noon"}}', "invalid payload"),
    ]
    assert {r.topic for r in of_nobody} == {f"{prefix}/alpha//s1", f"{prefix}/nowhere/Sensor/s1"}
    assert any("unknown commune 'nowhere'" in r.reason for r in of_nobody)


def test_a_message_for_beta_never_lands_in_alpha(hub, hub_beta, db, settings, mqtt_url):
    config = broker_settings(settings, mqtt_url)
    prefix = config.mqtt_topic_prefix
    run_consumer(
        config,
        db,
        [
            (f"{prefix}/beta/Sensor/only-beta", b'{"level": 1}'),
            (f"{prefix}/37001/Sensor/only-alpha", b'{"level": 2}'),
        ],
    )
    assert hub.get("/entities/urn:ngsi-ld:Sensor:only-beta").status_code == 404
    assert hub_beta.get("/entities/urn:ngsi-ld:Sensor:only-beta").status_code == 200
    assert hub_beta.get("/entities/urn:ngsi-ld:Sensor:only-alpha").status_code == 404
    assert [e["id"] for e in hub.get("/entities", params={"type": "Sensor"}).json()] == [
        "urn:ngsi-ld:Sensor:only-alpha"
    ]


def test_counters_are_served_to_the_instance_admin(client, app, db, settings, mqtt_url):
    assert client.get("/api/hub/ingest").status_code == 401
    make_commune(db)
    make_instance_admin(db)
    login(client, "root@example.org")
    assert client.get("/api/hub/ingest").json() == {
        "running": False,
        "connected": False,
        "received": 0,
        "stored": 0,
        "rejected": 0,
        "batches": 0,
    }
    config = broker_settings(settings, mqtt_url)
    prefix = config.mqtt_topic_prefix
    service = run_consumer(
        config, db, [(f"{prefix}/alpha/Sensor/a", b"{}"), (f"{prefix}/alpha/Sensor/b", b"[]")]
    )
    app.state.services[service.name] = service
    counters = client.get("/api/hub/ingest").json()
    assert counters["running"] is True
    assert (counters["received"], counters["stored"], counters["rejected"]) == (2, 1, 1)
    assert counters["batches"] >= 1


def test_a_shared_subscription_spreads_messages_over_consumers(hub, db, settings, mqtt_url):
    group = f"g{uuid.uuid4().hex[:8]}"
    first = broker_settings(settings, mqtt_url, mqtt_share_group=group)
    second = first.with_overrides(mqtt_client_id=f"communs-test-{uuid.uuid4().hex[:12]}")
    services = [IngestService(Broker.from_settings(c), db) for c in (first, second)]
    prefix, count = first.mqtt_topic_prefix, 300
    messages = [(f"{prefix}/alpha/Sensor/s{n}", b'{"level": %d}' % n) for n in range(count)]

    def done() -> bool:
        return sum(s.counters.stored for s in services) >= count

    asyncio.run(consume(services, lambda: publish_all(mqtt_url, messages), done))
    shares = [s.counters.received for s in services]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) == count and sum(s.counters.stored for s in services) == count
    found = hub.get("/entities", params={"type": "Sensor", "count": "true", "limit": "0"})
    assert found.headers["NGSILD-Results-Count"] == str(count)


# ---------------------------------------------------------------- a consumer killed mid-batch


def test_a_consumer_killed_mid_batch_loses_no_acknowledged_message(
    hub, database_url, tmp_path, mqtt_url
):
    """SIGKILL ``communs serve`` while it stores a stream of QoS 1 readings, restart it
    with the same client id: every reading the broker acknowledged to the publisher is
    stored (at least once)."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    env = {
        "COMMUNS_MQTT_URL": mqtt_url,
        "COMMUNS_MQTT_TOPIC_PREFIX": prefix,
        "COMMUNS_MQTT_CLIENT_ID": f"communs-test-{uuid.uuid4().hex[:12]}",
        "COMMUNS_MQTT_SESSION_EXPIRY": "300",
        "COMMUNS_SECRET_KEY": "test",
    }
    count, sensors = 20_000, 200
    engine = create_engine(database_url)
    publisher = PausingPublisher(mqtt_url, prefix, count, sensors)
    try:
        with serve_process(database_url, _folder(tmp_path, "first"), env=env) as (process, _url):
            _wait_for_log(tmp_path / "first" / "server.log", "MQTT ingestion: connected")
            publisher.start()
            _wait_for(lambda: _stored(engine) > 0, "a first batch", tmp_path / "first")
            # Publishing pauses (a chunk at most goes on: the broker keeps at most 1,000
            # messages for a session away, by default), then the consumer dies mid-stream.
            publisher.running.clear()
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        stored_at_kill = _stored(engine)
        assert 0 < stored_at_kill < count, f"the kill did not land mid-stream ({stored_at_kill})"
        with serve_process(database_url, _folder(tmp_path, "second"), env=env):
            _wait_for_log(tmp_path / "second" / "server.log", "MQTT ingestion: connected")
            publisher.running.set()
            publisher.join(TIMEOUT * 6)
            _wait_for(
                lambda: not publisher.is_alive() and not _acknowledged_missing(engine, publisher),
                "the redelivery",
                tmp_path / "second",
                details=lambda: _ingest_report(engine, publisher, stored_at_kill),
            )
        with engine.connect() as connection:
            numbers = connection.execute(text("SELECT number FROM hub_temporal_instances"))
            values = set(numbers.scalars())
    finally:
        publisher.running.set()
        engine.dispose()
    assert {float(n) for n in publisher.acknowledged} <= values
    assert len(publisher.acknowledged) == count, "the publisher did not get every PUBACK"


class PausingPublisher(threading.Thread):
    """Publishes ``count`` QoS 1 readings in chunks, as fast as paho goes, pausing
    between chunks while ``running`` is clear; ``acknowledged``: the sequence numbers
    the broker acknowledged (PUBACK)."""

    CHUNK = 400

    def __init__(self, mqtt_url: str, prefix: str, count: int, sensors: int) -> None:
        super().__init__(daemon=True)
        self.mqtt_url, self.prefix, self.count, self.sensors = mqtt_url, prefix, count, sensors
        self.running = threading.Event()
        self.running.set()
        self.acknowledged: list[int] = []

    def run(self) -> None:
        parts = urlsplit(self.mqtt_url)
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        client.loop_start()
        try:
            for start in range(0, self.count, self.CHUNK):
                self.running.wait()
                infos = [
                    (n, client.publish(self._topic(n), b'{"seq": %d}' % n, 1))
                    for n in range(start, min(start + self.CHUNK, self.count))
                ]
                for n, info in infos:
                    info.wait_for_publish(TIMEOUT)
                    if info.is_published():
                        self.acknowledged.append(n)
        finally:
            client.disconnect()
            client.loop_stop()

    def _topic(self, n: int) -> str:
        return f"{self.prefix}/alpha/Sensor/s{n % self.sensors}"


def _folder(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return folder


def _stored(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM hub_temporal_instances")).scalar_one()


def _wait_for(
    condition: Callable[[], bool],
    what: str,
    folder: Path,
    details: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(
                f"timed out waiting for {what}:\n{details()}\n{log_tail(folder / 'server.log')}"
            )
        time.sleep(0.01)


def _stored_readings(engine) -> set[int]:
    with engine.connect() as connection:
        numbers = connection.execute(text("SELECT number FROM hub_temporal_instances"))
        return {int(n) for n in numbers.scalars() if n is not None}


def _acknowledged_missing(engine, publisher: PausingPublisher) -> list[int]:
    """Readings the broker acknowledged to the publisher and the hub has not stored."""
    return sorted(set(publisher.acknowledged) - _stored_readings(engine))


def _ingest_report(engine, publisher: PausingPublisher, stored_at_kill: int) -> str:
    """What a failed redelivery leaves: which acknowledged readings are not stored."""
    stored = _stored_readings(engine)
    acknowledged = list(publisher.acknowledged)
    missing = sorted(set(acknowledged) - stored)
    return (
        f"stored at the kill: {stored_at_kill}; stored now: {_stored(engine)} rows, "
        f"{len(stored)} distinct readings; publisher alive: {publisher.is_alive()}, "
        f"acknowledged by the broker: {len(acknowledged)}; acknowledged and not stored: "
        f"{len(missing)} (first ones: {missing[:20]})"
    )


def _wait_for_log(path: Path, line: str) -> None:
    _wait_for(lambda: line in path.read_text(errors="replace"), line, path.parent)


# ---------------------------------------------------------------- command line


def test_mappings_and_rejections_from_the_cli(hub, db, database_url, tmp_path):
    def cli(*args: str):
        return run_cli(database_url, tmp_path, "hub", *args)

    added = cli("mapping", "set", "alpha", "TemperatureSensor", "temperature", "--unit-code", "CEL")
    assert added.returncode == 0, added.stderr
    assert cli("mapping", "set", "alpha", "Meter", "volume", "--time-key", "").returncode == 0
    listed = cli("mapping", "list", "alpha")
    assert "TemperatureSensor" in listed.stdout and "CEL" in listed.stdout
    with db.read() as session:
        assert devices.list_mappings(session, _commune_id(db, "alpha")) == [
            DeviceMapping("Meter", "volume", "v", None, None),
            SENSOR_MAPPING,
        ]
    refused = cli("mapping", "set", "alpha", "a/b", "temperature")
    assert refused.returncode == 2 and "niveau de sujet MQTT" in refused.stderr
    assert cli("mapping", "remove", "alpha", "Meter").returncode == 0
    assert cli("mapping", "remove", "alpha", "Meter").returncode == 2
    rejection = devices.Rejection(_commune_id(db, "alpha"), "communs/alpha/S/1", b"{x", "bad JSON")
    db.write(devices.add_rejections, [rejection])
    shown = cli("rejections", "alpha", "--limit", "5")
    assert (
        shown.returncode == 0 and "bad JSON" in shown.stdout and "communs/alpha/S/1" in shown.stdout
    )
    assert "bad JSON" not in cli("rejections").stdout


def test_ingest_command_needs_a_broker(database_url, tmp_path, monkeypatch):
    monkeypatch.delenv("COMMUNS_MQTT_URL", raising=False)
    answer = run_cli(database_url, tmp_path, "ingest")
    assert answer.returncode == 2 and "COMMUNS_MQTT_URL" in answer.stderr
