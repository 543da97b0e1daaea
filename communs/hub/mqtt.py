"""A lean MQTT 5 subscriber for the ingestion consumer (``communs.hub.ingest``).

It does what the consumer needs and nothing more: CONNECT (clean start off, session
expiry, Receive Maximum, user name and password, TLS), SUBSCRIBE with options, PUBLISH
received at QoS 0 or 1 and acknowledged (PUBACK) when the caller says so, PINGREQ
keep-alive, DISCONNECT. It never publishes, and announces no topic alias (so the
broker uses none). Messages are parsed from whole socket buffers and handed over in
batches; the PUBACKs of a batch leave in one write.

Why not aiomqtt (paho-mqtt underneath): measured here (2 cores, Mosquitto on
loopback), a bare aiomqtt subscriber that stores nothing and acknowledges each message
receives about 7,000 messages/s at best, and 3,000 through its message iterator: paho
reads each packet with several ``recv`` calls, one packet per event-loop turn, and
builds MQTT 5 property objects for each. That alone is below the 10,000 messages/s the
hub must ingest. This client costs a few microseconds per message.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x82, 0x90, 0xC0, 0xD0, 0xE0
SESSION_EXPIRY, SERVER_KEEP_ALIVE, RECEIVE_MAXIMUM, REASON_STRING = 0x11, 0x13, 0x21, 0x1F
RETAIN_DO_NOT_SEND = 2
TIMEOUT = 10.0

# MQTT 5 property identifiers by the shape of their value (section 2.2.2.2).
_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_TWO = {0x13, 0x21, 0x22, 0x23}
_FOUR = {0x02, 0x11, 0x18, 0x27}
_TEXT = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}
_VARINT, _PAIR = 0x0B, 0x26
_PUBACK = struct.Struct(">BBH")


class MqttError(Exception):
    """The broker refused us, broke the protocol, or the connection is gone."""


@dataclass(slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    mid: int
    retain: bool = False


# ---------------------------------------------------------------- encoding


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(value, position after it); ``(-1, pos)`` when ``data`` ends inside it."""
    value, shift = 0, 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise MqttError("malformed variable byte integer")
    return -1, pos


def text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    keepalive: int,
    session_expiry: int,
    receive_maximum: int,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    properties = bytes([SESSION_EXPIRY]) + session_expiry.to_bytes(4, "big")
    properties += bytes([RECEIVE_MAXIMUM]) + receive_maximum.to_bytes(2, "big")
    body = text("MQTT") + bytes([5, flags]) + keepalive.to_bytes(2, "big")
    body += varint(len(properties)) + properties + text(client_id)
    if username is not None:
        body += text(username)
    if password is not None:
        body += text(password)
    return packet(CONNECT, body)


def subscribe_packet(mid: int, topic_filter: str, qos: int, retain_handling: int) -> bytes:
    options = qos | (retain_handling << 4)
    body = mid.to_bytes(2, "big") + b"\x00" + text(topic_filter) + bytes([options])
    return packet(SUBSCRIBE, body)


def puback_packets(messages: list[Message]) -> bytes:
    return b"".join(_PUBACK.pack(PUBACK, 2, m.mid) for m in messages if m.qos == 1)


def parse_properties(data: bytes, pos: int) -> tuple[dict[int, Any], int]:
    """The properties at ``pos`` (length first) and the position after them."""
    size, pos = read_varint(data, pos)
    end, found = pos + size, {}
    while pos < end:
        key = data[pos]
        pos += 1
        if key in _BYTE:
            found[key], pos = data[pos], pos + 1
        elif key in _TWO:
            found[key], pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif key in _FOUR:
            found[key], pos = int.from_bytes(data[pos : pos + 4], "big"), pos + 4
        elif key in _TEXT or key in _BINARY:
            length = int.from_bytes(data[pos : pos + 2], "big")
            found[key], pos = bytes(data[pos + 2 : pos + 2 + length]), pos + 2 + length
        elif key == _VARINT:
            found[key], pos = read_varint(data, pos)
        elif key == _PAIR:
            for _ in range(2):
                pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        else:
            raise MqttError(f"unknown MQTT property 0x{key:02x}")
    return found, end


def parse_publish(first: int, data: bytes, pos: int, end: int) -> Message:
    """The PUBLISH packet whose body is ``data[pos:end]``."""
    qos = (first >> 1) & 3
    size = (data[pos] << 8) | data[pos + 1]
    pos += 2
    try:
        topic = data[pos : pos + size].decode()
    except UnicodeDecodeError as error:
        raise MqttError("topic is not UTF-8") from error
    pos, mid = pos + size, 0
    if qos:
        mid = (data[pos] << 8) | data[pos + 1]
        pos += 2
    if data[pos] < 0x80:  # properties: most often none
        pos += 1 + data[pos]
    else:
        length, pos = read_varint(data, pos)
        pos += length
    if pos > end:
        raise MqttError("malformed PUBLISH packet")
    return Message(topic, data[pos:end], qos, mid, bool(first & 1))


def _reason(properties: dict[int, Any]) -> str:
    found = properties.get(REASON_STRING)
    return f" ({found.decode(errors='replace')})" if found else ""


# ---------------------------------------------------------------- the client


class Subscriber(asyncio.Protocol):
    """One connection to the broker: ``async with Subscriber(…) as client``, then
    ``subscribe``, then ``batch()`` and ``ack(messages)`` in a loop."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 60,
        session_expiry: int = 0,
        receive_maximum: int = 65_535,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.keepalive = keepalive
        self._connect = connect_packet(
            client_id,
            keepalive=keepalive,
            session_expiry=session_expiry,
            receive_maximum=receive_maximum,
            username=username,
            password=password,
        )
        self.session_present = False
        self.messages: deque[Message] = deque()
        self._pending = b""
        self._transport: asyncio.Transport | None = None
        self._lost: MqttError | None = None
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._arrived: asyncio.Future[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._last_write = self._last_read = time.monotonic()
        self._next_mid = 0

    # ------------------------------------------------------------ life cycle

    async def __aenter__(self) -> Subscriber:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: self,
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                ),
                TIMEOUT,
            )
        except (OSError, TimeoutError) as error:
            raise MqttError(f"cannot reach {self.host}:{self.port}: {error!r}") from None
        try:
            self._write(self._connect)
            await self._answer(CONNACK)
        except BaseException:
            self._close()
            raise
        self._pinger = asyncio.create_task(self._keep_alive())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._transport is not None and self._lost is None:
            self._write(bytes([DISCONNECT, 0]))
        self._close()

    def _close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        if self._transport is not None:
            self._transport.close()

    # ------------------------------------------------------------ requests

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self._next_mid = self._next_mid % 65_535 + 1
        self._write(subscribe_packet(self._next_mid, topic_filter, qos, RETAIN_DO_NOT_SEND))
        codes = await self._answer(SUBACK)
        if any(code >= 0x80 for code in codes):
            raise MqttError(f"subscription to {topic_filter} refused (0x{codes[0]:02x})")

    async def batch(self, limit: int) -> list[Message]:
        """The messages received (at least one, at most ``limit``), oldest first. Once
        the connection is lost, those not handed over are dropped (the broker sends
        them again)."""
        while not self.messages or self._lost is not None:
            if self._lost is not None:
                raise self._lost
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived
        messages = self.messages
        if len(messages) <= limit:
            self.messages = deque()
            return list(messages)
        return [messages.popleft() for _ in range(limit)]

    def ack(self, messages: list[Message]) -> None:
        """Acknowledge QoS 1 messages (in the order received, as MQTT wants)."""
        if self._lost is None and self._transport is not None:
            acks = puback_packets(messages)
            if acks:
                self._write(acks)

    def _write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)
        self._last_write = time.monotonic()

    async def _answer(self, kind: int) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._waiters[kind] = future
        try:
            return await asyncio.wait_for(future, TIMEOUT)
        except TimeoutError:
            raise MqttError(f"no answer from {self.host}:{self.port}") from None
        finally:
            self._waiters.pop(kind, None)

    async def _keep_alive(self) -> None:
        """PINGREQ when nothing was sent or received for half the keep-alive; a broker
        silent for 1.5 keep-alives is gone."""
        if not self.keepalive:
            return
        period = self.keepalive / 2
        while True:
            await asyncio.sleep(period / 2)
            now = time.monotonic()
            if now - self._last_read > 1.5 * self.keepalive and self._transport is not None:
                self._transport.abort()
                return
            if now - min(self._last_write, self._last_read) >= period:
                self._write(bytes([PINGREQ, 0]))

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost is None:
            self._lost = MqttError(f"connection to {self.host}:{self.port} lost: {exc or 'closed'}")
        for future in (*self._waiters.values(), self._arrived):
            if future is not None and not future.done():
                future.set_exception(self._lost)
        if self._pinger is not None:
            self._pinger.cancel()

    def data_received(self, data: bytes) -> None:
        self._last_read = time.monotonic()
        if self._pending:
            data = self._pending + data
        before = len(self.messages)
        try:
            used = self._parse(data)
        except (MqttError, IndexError) as error:
            self._lost = error if isinstance(error, MqttError) else MqttError("malformed packet")
            assert self._transport is not None
            self._transport.abort()
            return
        self._pending = data[used:]
        arrived = self._arrived
        if len(self.messages) > before and arrived is not None and not arrived.done():
            arrived.set_result(None)

    def _parse(self, data: bytes) -> int:
        """Handle every whole packet in ``data``; the number of bytes used."""
        pos, end, messages = 0, len(data), self.messages
        while end - pos >= 2:
            first = data[pos]
            if data[pos + 1] < 0x80:  # the common case: a packet under 128 bytes
                size, start = data[pos + 1], pos + 2
            else:
                size, start = read_varint(data, pos + 1)
                if size < 0:
                    break
            if end - start < size:
                break
            pos = start + size
            if first & 0xF0 == PUBLISH:
                messages.append(parse_publish(first, data, start, pos))
            else:
                self._control(first, data[start:pos])
        return pos

    def _control(self, first: int, body: bytes) -> None:
        kind = first & 0xF0
        if kind == CONNACK:
            self._connack(body)
        elif kind == SUBACK:
            _properties, pos = parse_properties(body, 2)
            self._resolve(SUBACK, list(body[pos:]))
        elif kind == DISCONNECT:
            reason = body[0] if body else 0
            properties = parse_properties(body, 1)[0] if len(body) > 1 else {}
            self._lost = MqttError(
                f"the broker closed the connection (0x{reason:02x}){_reason(properties)}"
            )
        elif kind != PINGRESP:
            raise MqttError(f"unexpected MQTT packet 0x{first:02x}")

    def _connack(self, body: bytes) -> None:
        reason = body[1]
        properties = parse_properties(body, 2)[0] if len(body) > 2 else {}
        if reason >= 0x80:
            error = MqttError(f"connection refused (0x{reason:02x}){_reason(properties)}")
            future = self._waiters.get(CONNACK)
            if future is not None and not future.done():
                future.set_exception(error)
            return
        self.session_present = bool(body[0] & 1)
        self.keepalive = properties.get(SERVER_KEEP_ALIVE, self.keepalive)
        self._resolve(CONNACK, None)

    def _resolve(self, kind: int, value: Any) -> None:
        future = self._waiters.get(kind)
        if future is not None and not future.done():
            future.set_result(value)
