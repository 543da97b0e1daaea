"""Notification latency: from a PATCH to its notification's receipt at a local webhook.

    python bench/hub/bench_notify.py [--rate 1000] [--seconds 10] [--subscriptions 100]
                                     [--database-url URL]

A real ``communs serve`` holds ``--subscriptions`` entities, each watched by its own
subscription whose endpoint is a webhook on loopback (all the same URL, so one queue).
PATCHes are sent at a fixed rate (open loop: latencies count from the moment each
request was due, so a stall is not hidden), round robin over the entities; each one
causes exactly one notification. Printed: PATCH and notification latency p50/p99.

References, measured in the same run with the same client and webhook:
- the PATCH's own latency (the write acknowledged): notification p50 / PATCH p50;
- a bare hop: the bench POSTs straight to the webhook at the same rate.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).parent))

from bench_hub import communs_server, database  # noqa: E402

ENTITY = "urn:ngsi-ld:Sensor:bench-{}"


class Webhook:
    """A minimal HTTP/1.1 receiver on asyncio: answers 204, records receipt times."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _content_length(head)
                body = await reader.readexactly(length) if length else b""
                self.received.append((time.perf_counter(), body))
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    return 0


class Sender:
    """Requests at a fixed rate over a few keep-alive connections (raw HTTP/1.1)."""

    def __init__(self, host: str, port: int, connections: int = 16) -> None:
        self.host, self.port, self.connections = host, port, connections

    async def run(self, requests: list[bytes], rate: float) -> list[tuple[float, float]]:
        """Sends ``requests``; answers each request's (due time, answer time)."""
        queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
        timings: list[tuple[float, float]] = [(0.0, 0.0)] * len(requests)
        workers = [
            asyncio.create_task(self._worker(queue, requests, timings))
            for _ in range(self.connections)
        ]
        start = time.perf_counter() + 0.05
        for index in range(len(requests)):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((index, due))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
        return timings

    async def _worker(self, queue, requests, timings) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        while (item := await queue.get()) is not None:
            index, due = item
            writer.write(requests[index])
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                raise SystemExit(f"request {index} failed: {head[:200]!r}")
            length = _content_length(head)
            if length:
                await reader.readexactly(length)
            timings[index] = (due, time.perf_counter())
        writer.close()


def raw_request(method: str, path: str, body: bytes, host: str, headers: str = "") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{headers}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def setup(base: str, key: str, hook_url: str, count: int, subscribe: bool = True) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base + "/ngsi-ld/v1", headers=headers, timeout=60) as client:
        entities = [
            {"id": ENTITY.format(n), "type": "Sensor", "level": {"type": "Property", "value": 0}}
            for n in range(count)
        ]
        response = client.post("/entityOperations/create", json=entities)
        response.raise_for_status()
        for n in range(count if subscribe else 0):
            subscription = {
                "type": "Subscription",
                "entities": [{"id": ENTITY.format(n), "type": "Sensor"}],
                "watchedAttributes": ["level"],
                "notification": {"endpoint": {"uri": hook_url}, "format": "keyValues"},
            }
            client.post("/subscriptions", json=subscription).raise_for_status()


async def notifier_ready(base: str, key: str, hook: Webhook) -> None:
    """Wait until a first notification arrives: ``communs serve`` starts its notifier
    process (a second or two) while the bench is setting up."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base + "/ngsi-ld/v1", headers=headers) as client:
        probe = {"level": {"type": "Property", "value": 0}}
        response = await client.patch(f"/entities/{ENTITY.format(0)}/attrs", json=probe)
        response.raise_for_status()
    deadline = time.perf_counter() + 30
    while not hook.received and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms  max {ordered[-1] * 1000:6.1f} ms"


async def measure(base: str, key: str, args: argparse.Namespace) -> None:
    hook = Webhook()
    hook_url = await hook.start()
    await asyncio.to_thread(
        setup, base, key, hook_url, args.subscriptions, not args.without_subscriptions
    )
    host, port = base.removeprefix("http://").split(":")
    total = int(args.rate * args.seconds)
    auth = f"Authorization: Bearer {key}\r\n"
    patches = [
        raw_request(
            "PATCH",
            f"/ngsi-ld/v1/entities/{ENTITY.format(n % args.subscriptions)}/attrs",
            orjson.dumps({"level": {"type": "Property", "value": n + 1}}),
            host,
            auth,
        )
        for n in range(total)
    ]
    if not args.without_subscriptions:
        await notifier_ready(base, key, hook)
    hook.received.clear()
    timings = await Sender(host, int(port)).run(patches, args.rate)
    deadline = time.perf_counter() + (0 if args.without_subscriptions else 30)
    while time.perf_counter() < deadline:
        if len({orjson.loads(body)["data"][0]["level"] for _at, body in hook.received}) >= total:
            break
        await asyncio.sleep(0.5)
    arrivals: dict[int, float] = {}
    for at, body in hook.received:
        value = orjson.loads(body)["data"][0]["level"]
        arrivals.setdefault(value - 1, at)
    warm = int(args.rate)  # the first second warms connections and caches up
    patch_latency = [answer - due for due, answer in timings[warm:]]
    notify_latency = [arrivals[n] - timings[n][0] for n in range(warm, total) if n in arrivals]
    missing = total - len(arrivals)

    # Reference: the same client posting straight to the webhook, same rate.
    hook_host, hook_port = hook_url.removeprefix("http://").split("/")[0].split(":")
    direct = [
        raw_request("POST", "/hook", orjson.dumps({"data": [{"level": n + 1}]}), hook_host)
        for n in range(total)
    ]
    hook.received.clear()
    bare = await Sender(hook_host, int(hook_port)).run(direct, args.rate)
    bare_latency = [answer - due for due, answer in bare[warm:]]

    if args.timeline:
        for second in range(int(args.seconds)):
            window = range(int(second * args.rate), int((second + 1) * args.rate))
            late = [arrivals[n] - timings[n][0] for n in window if n in arrivals]
            answered = [timings[n][1] - timings[n][0] for n in window]
            print(
                f"  second {second:2d}: PATCH max {max(answered, default=0) * 1000:6.1f} ms, "
                f"notification max {max(late, default=0) * 1000:6.1f} ms"
            )
    print(f"{total} PATCHes at {args.rate:.0f}/s, {args.subscriptions} subscriptions")
    print(f"  PATCH answered       {percentiles(patch_latency)}")
    if notify_latency:
        print(f"  notification arrived {percentiles(notify_latency)}  (missing: {missing})")
    print(f"  reference, bare hop  {percentiles(bare_latency)}")
    if notify_latency:
        ratio = statistics.median(notify_latency) / statistics.median(patch_latency)
        print(f"  ratio notification p50 / PATCH p50: {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--database-url")
    parser.add_argument("--timeline", action="store_true", help="the worst latency per second")
    parser.add_argument(
        "--without-subscriptions",
        action="store_true",
        help="the same PATCHes with no subscription (what notifications cost)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder_name:
        folder = Path(folder_name)
        with (
            database(args.database_url, folder, "notify") as url,
            communs_server(url, folder) as (base, key),
        ):
            # uvloop: the bench's own client and webhook must cost little CPU, since
            # they share the machine's two cores with the server.
            uvloop.run(measure(base, key, args))


if __name__ == "__main__":
    main()
