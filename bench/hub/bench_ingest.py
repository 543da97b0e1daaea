"""MQTT ingestion end to end: publisher → Mosquitto on loopback → ``communs serve`` →
stored and queryable.

    python bench/hub/bench_ingest.py [--messages 50000] [--sensors 1000]
        [--payload device|normalized|keyvalues] [--mqtt-url mqtt://127.0.0.1:1883]
        [--database-url URL]

``--sensors`` entities are created by a first reading each (not timed); then
``--messages`` readings are published with QoS 1 by a lean publisher (pre-encoded
MQTT 3.1.1 packets on a socket, so that the publisher costs little of the machine).
Reading ``k`` of a sensor has ``seq = k``: the run ends when the hub answers that every
sensor has its last ``seq`` (``GET /entities?q=seq==…&count=true``); the history is
then counted in SQL (nothing lost). Latency: ``created_at - observed_at`` of the
recorded instances (the payload carries its publication time).

Reference, measured in the same run: the same readings upserted in-process through
the hub's write path (``store_batch``, batches of 5,000) without MQTT nor HTTP: the
ratio is what the transport, parsing and batching cost on top of storing. Also
printed, for scale: the rate of a bare subscriber that stores nothing, with
``communs.hub.mqtt`` and with aiomqtt. Latency percentiles come from a second, paced
phase (``--rate``, half the measured throughput by default, ``--paced-seconds``).

The broker keeps at most 65,535 unacknowledged messages in flight to the consumer,
plus ``max_queued_messages`` (1,000 by default) queued: keep ``--messages`` below
60,000 per run unless the broker is configured for more.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).parent))

from bench_hub import ROOT, TENANT, communs_server, database  # noqa: E402

from communs.core.db import Database  # noqa: E402
from communs.core.service import commune_by_slug  # noqa: E402
from communs.hub import devices  # noqa: E402
from communs.hub.ingest import (  # noqa: E402
    MAX_BATCH,
    Parsed,
    Reading,
    TopicParts,
    parse_message,
    store_batch,
)

MAPPING = devices.DeviceMapping("Sensor", "seq", "v", "t", None)
MQTT_URL = "mqtt://127.0.0.1:1883"
CHUNK = 500  # packets encoded and sent together
WINDOW = 20_000  # unacknowledged publications at most


# ---------------------------------------------------------------- a lean MQTT publisher


def _length(size: int) -> bytes:
    out = bytearray()
    while True:
        size, digit = divmod(size, 128)
        out.append(digit | (0x80 if size else 0))
        if not size:
            return bytes(out)


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _length(len(body)) + body


def _string(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


class Publisher:
    """MQTT 3.1.1, QoS 1, without a client library: packets are built in chunks and
    written at once; a thread counts the PUBACKs."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 1883))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client_id = f"bench-pub-{uuid.uuid4().hex[:8]}".encode()
        variable = _string(b"MQTT") + bytes([4, 0x02]) + (0).to_bytes(2, "big")
        self.sock.sendall(_packet(0x10, variable + _string(client_id)))
        if self.sock.recv(4)[:2] != b"\x20\x02":
            raise SystemExit("no CONNACK from the broker")
        self.acked = 0
        self.sent = 0
        self.done = threading.Condition()
        self.reader = threading.Thread(target=self._read_acks, daemon=True)
        self.reader.start()

    def _read_acks(self) -> None:
        pending = b""
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                return
            pending += data
            whole = len(pending) // 4  # PUBACKs only: 0x40 0x02 <mid>
            pending = pending[whole * 4 :]
            with self.done:
                self.acked += whole
                self.done.notify_all()

    def publish(self, messages: list[tuple[bytes, bytes]], rate: float | None = None) -> None:
        """Publish ``(topic, payload)`` pairs, as fast as possible or at ``rate`` msg/s;
        payloads may hold ``{now}``, replaced by the time the chunk leaves."""
        size = CHUNK if rate is None else max(1, int(rate / 200))  # every 5 ms when paced
        begin = time.perf_counter()
        for start in range(0, len(messages), size):
            if rate is not None:
                time.sleep(max(0.0, begin + start / rate - time.perf_counter()))
            with self.done:
                self.done.wait_for(lambda: self.sent - self.acked < WINDOW)
            now = _iso_now().encode()
            chunk = []
            for topic, payload in messages[start : start + size]:
                self.sent += 1
                mid = (self.sent % 65_535) + 1
                body = _string(topic) + mid.to_bytes(2, "big") + payload.replace(b"{now}", now)
                chunk.append(_packet(0x32, body))
            self.sock.sendall(b"".join(chunk))

    def wait_acked(self) -> None:
        with self.done:
            if not self.done.wait_for(lambda: self.acked >= self.sent, timeout=120):
                raise SystemExit(f"only {self.acked} of {self.sent} PUBACKs")

    def close(self) -> None:
        self.sock.sendall(b"\xe0\x00")  # DISCONNECT: the broker closes the socket
        self.reader.join(timeout=10)
        self.sock.close()


def _iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- workload


def payload(kind: str, seq: int) -> bytes:
    if kind == "device":
        return b'{"v": %d, "t": "{now}", "battery": 87}' % seq
    if kind == "normalized":
        return (
            b'{"seq": {"type": "Property", "value": %d, "observedAt": "{now}"}, '
            b'"temperature": {"type": "Property", "value": 21.5, "unitCode": "CEL"}}' % seq
        )
    return b'{"seq": %d, "temperature": 21.5}' % seq


def workload(prefix: str, kind: str, sensors: int, rounds: range) -> list[tuple[bytes, bytes]]:
    """Reading ``seq`` of every sensor, round after round."""
    return [
        (f"{prefix}/{TENANT}/Sensor/s{sensor}".encode(), payload(kind, seq))
        for seq in rounds
        for sensor in range(sensors)
    ]


# ---------------------------------------------------------------- the measured run


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def sensors_at(client: httpx.Client, seq: int) -> int:
    answer = client.get(
        "/ngsi-ld/v1/entities",
        params={"type": "Sensor", "q": f"seq=={seq}", "count": "true", "limit": "0"},
    )
    return int(answer.headers.get("NGSILD-Results-Count", "0"))


def run_communs(args: argparse.Namespace, url: str, folder: Path) -> dict[str, float]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {
        "COMMUNS_MQTT_URL": args.mqtt_url,
        "COMMUNS_MQTT_TOPIC_PREFIX": prefix,
        "COMMUNS_MQTT_CLIENT_ID": f"communs-{prefix}",
        "COMMUNS_MQTT_SESSION_EXPIRY": "60",
    }
    rounds = args.messages // args.sensors
    with communs_server(url, folder, env) as (base, _key):
        if args.payload == "device":  # the mapping would read the others as devices
            _map_device_payloads(url)
        log = folder / "serve.log"
        wait_for(lambda: "MQTT ingestion: connected" in log.read_text(), "the subscription")
        publisher = Publisher(args.mqtt_url)
        with httpx.Client(base_url=base, timeout=30) as client:

            def stored(seq: int) -> bool:
                return sensors_at(client, seq) == args.sensors

            publisher.publish(workload(prefix, args.payload, args.sensors, range(1)))
            wait_for(lambda: stored(0), "the first readings")
            messages = workload(prefix, args.payload, args.sensors, range(1, rounds + 1))
            begin = time.perf_counter()
            publisher.publish(messages)
            publisher.wait_acked()
            published = time.perf_counter() - begin
            wait_for(lambda: stored(rounds), "the last readings")
            elapsed = time.perf_counter() - begin
            rate = args.rate or len(messages) / elapsed / 2
            paced_from = _micros_now()
            last = rounds + max(int(rate * args.paced_seconds) // args.sensors, 1)
            paced = workload(prefix, args.payload, args.sensors, range(rounds + 1, last + 1))
            publisher.publish(paced, rate)
            wait_for(lambda: stored(last), "the paced readings")
        publisher.close()
    recorded, latencies = history(url, paced_from)
    expected = args.sensors * (rounds + 1) + len(paced)
    if recorded < expected:
        raise SystemExit(f"history has {recorded} instances, {expected} expected")
    return {
        "messages": len(messages),
        "elapsed": elapsed,
        "published": published,
        "recorded": recorded,
        "rate": rate,
        **latencies,
    }


def _micros_now() -> int:
    return time.time_ns() // 1000


def _map_device_payloads(url: str) -> None:
    db = Database(url)
    with db.read() as session:
        commune_id = commune_by_slug(session, TENANT).id
    db.write(devices.set_mapping, commune_id, MAPPING)
    db.close()


def history(url: str, since: int) -> tuple[int, dict[str, float]]:
    """Instances recorded, and publication → storage latencies (ms) of those observed
    since ``since`` (µs), when the payloads carry their publication time."""
    engine = create_engine(url)
    with engine.connect() as connection:
        recorded = connection.execute(
            text("SELECT count(*) FROM hub_temporal_instances")
        ).scalar_one()
        delays = connection.execute(
            text(
                "SELECT created_at - observed_at FROM hub_temporal_instances "
                "WHERE observed_at >= :since AND observed_at <> created_at"
            ),
            {"since": since},
        ).scalars()
        found = sorted(delay / 1000 for delay in delays)
    engine.dispose()
    if len(found) < 20:
        return recorded, {}
    q = statistics.quantiles(found, n=100)
    return recorded, {"p50": q[49], "p95": q[94], "p99": q[98]}


# ---------------------------------------------------------------- references


BARE_SUBSCRIBER = """
import asyncio, sys
from communs.hub.mqtt import Subscriber

async def main(host, port, topic, expected):
    async with Subscriber(host, port, "bench-bare-" + topic.split("/")[0]) as client:
        await client.subscribe(topic, 1)
        print("ready", flush=True)
        count = 0
        while count < expected:
            batch = await client.batch(5000)
            client.ack(batch)
            count += len(batch)
        print("done", flush=True)
"""

BARE_AIOMQTT_SUBSCRIBER = """
import asyncio, sys, aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

async def main(host, port, topic, expected):
    properties = Properties(PacketTypes.CONNECT)
    properties.ReceiveMaximum = 65535
    client = aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V5,
                            properties=properties)
    client._client.manual_ack_set(True)
    async with client:
        await client.subscribe(topic, qos=1)
        print("ready", flush=True)
        count = 0
        async for message in client.messages:
            client._client.ack(message.mid, message.qos)
            count += 1
            if count == expected:
                print("done", flush=True)
                return
"""

RUN = """
host, port, topic, expected = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
asyncio.run(main(host, port, topic, expected))
"""


def run_bare_subscriber(args: argparse.Namespace, code: str, count: int) -> float | None:
    """msg/s of ``count`` such messages to a subscriber that stores nothing (None if it
    does not receive them all within a minute)."""
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    messages = workload(prefix, args.payload, args.sensors, range(1, count // args.sensors + 1))
    parts = urlsplit(args.mqtt_url)
    command = [sys.executable, "-c", code + RUN, parts.hostname or "127.0.0.1"]
    command += [str(parts.port or 1883), f"{prefix}/+/+/+", str(len(messages))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        if _line(process, 30) != "ready":
            raise SystemExit("the bare subscriber did not start")
        publisher = Publisher(args.mqtt_url)
        begin = time.perf_counter()
        publisher.publish(messages)
        done = _line(process, 60) == "done"
        elapsed = time.perf_counter() - begin
        publisher.wait_acked()
        publisher.close()
    finally:
        process.kill()
        process.wait()
    return len(messages) / elapsed if done else None


def _line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline().strip() if ready else ""


def run_in_process_upsert(args: argparse.Namespace, folder: Path) -> float:
    """Seconds to upsert the same readings through ``store_batch`` (no MQTT, no HTTP),
    batches of 5,000, into a fresh database that already has the sensors."""
    with database(args.database_url, folder, "reference") as url:
        from communs.core import migrate
        from communs.core.service import create_commune

        migrate.upgrade(url)
        db = Database(url)
        commune_id = db.write(
            create_commune, slug=TENANT, name="Banc", insee_code="37998", boundary=None
        ).id
        db.write(devices.set_mapping, commune_id, MAPPING)
        rounds = args.messages // args.sensors

        def batches(seqs: range) -> list[Parsed]:
            readings = [
                Reading(commune_id, _parsed(args.payload, sensor, seq), "", b"")
                for seq in seqs
                for sensor in range(args.sensors)
            ]
            size = MAX_BATCH
            return [Parsed(readings[i : i + size]) for i in range(0, len(readings), size)]

        for parsed in batches(range(1)):
            db.write(store_batch, parsed)
        measured = batches(range(1, rounds + 1))
        begin = time.perf_counter()
        for parsed in measured:
            db.write(store_batch, parsed)
        elapsed = time.perf_counter() - begin
        db.close()
    return elapsed


def _parsed(kind: str, sensor: int, seq: int) -> dict:
    parts = TopicParts(TENANT, "Sensor", f"urn:ngsi-ld:Sensor:s{sensor}")
    raw = payload(kind, seq).replace(b"{now}", _iso_now().encode())
    return parse_message(parts, raw, MAPPING if kind == "device" else None)


# ---------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url")
    parser.add_argument("--mqtt-url", default=os.environ.get("COMMUNS_MQTT_URL", MQTT_URL))
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument(
        "--payload", choices=["device", "normalized", "keyvalues"], default="device"
    )
    parser.add_argument("--rate", type=float, help="msg/s of the latency phase (default: half)")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        with database(args.database_url, folder) as url:
            ours = run_communs(args, url, folder)
        upsert = run_in_process_upsert(args, folder)
        bare = run_bare_subscriber(args, BARE_SUBSCRIBER, args.messages)
        # aiomqtt stalls on large in-flight windows here: a smaller sample
        bare_aiomqtt = run_bare_subscriber(args, BARE_AIOMQTT_SUBSCRIBER, 20_000)
    report(args, ours, upsert, bare, bare_aiomqtt)


def report(
    args: argparse.Namespace, ours: dict, upsert: float, bare: float | None, aio: float | None
) -> None:
    count, elapsed = ours["messages"], ours["elapsed"]
    store = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"MQTT ingestion, {count} QoS 1 readings of {args.sensors} sensors "
        f"({args.payload} payloads), Mosquitto on loopback, {store}"
    )
    print(f"  communs     : {count / elapsed:9.0f} msg/s published → stored and queryable")
    print(
        f"                (publisher done in {ours['published']:.2f} s, all stored in "
        f"{elapsed:.2f} s; {ours['recorded']} history instances, none missing)"
    )
    if "p50" in ours:
        print(
            f"  latency     : p50 {ours['p50']:7.1f} ms  p95 {ours['p95']:7.1f} ms  "
            f"p99 {ours['p99']:7.1f} ms  (publication → stored, at {ours['rate']:.0f} msg/s)"
        )
    print(
        f"  reference   : {count / upsert:9.0f} msg/s: the same readings upserted in-process "
        "through store_batch (the hub's write path, no MQTT)"
    )
    print(f"  ratio       : {upsert / elapsed:.2f} of the reference")
    print(
        f"  for scale   : {_rate(bare)} msg/s to a bare subscriber storing nothing "
        f"(communs.hub.mqtt), {_rate(aio).strip()} msg/s with aiomqtt (20,000 messages)"
    )


def _rate(value: float | None) -> str:
    return f"{value:9.0f}" if value is not None else "      n/a"


if __name__ == "__main__":
    main()
