"""A real HTTP receiver for notifications, on a free loopback port, in a thread."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    path: str
    at: float = field(default_factory=time.monotonic)


class Webhook:
    """Records every POST. ``fail_first`` calls answer 500; with ``hang``, requests are
    accepted and never answered (until the webhook closes)."""

    def __init__(self, *, fail_first: int = 0, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.hang = hang
        self.calls = 0
        self.received: list[Received] = []
        self.lock = threading.Condition()
        self.closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/notify"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with hook.lock:
                    hook.calls += 1
                    failing = hook.calls <= hook.fail_first
                if hook.hang:
                    hook.closing.wait(60)
                    return
                if not failing:
                    with hook.lock:
                        hook.received.append(
                            Received(orjson.loads(raw), dict(self.headers), self.path)
                        )
                        hook.lock.notify_all()
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        return Handler

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(self.received)} notification(s) received, {count} expected"
                    )
                self.lock.wait(left)
            return list(self.received)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.body for r in self.received]

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()
