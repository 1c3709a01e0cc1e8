"""A TCP relay in front of PostgreSQL that counts round trips and statements on the wire.

Point a client at ``relay.dsn_address`` instead of the server. The relay forwards bytes
unchanged and reads the frontend (client) messages of the PostgreSQL protocol v3:

- a *round trip* is a client turn: client bytes arriving after the server last spoke (or
  at the start). A client that waits for an answer before sending more makes one turn per
  wait, however it splits its messages; server-initiated messages (notifications) add none;
- a *statement* is a simple ``Query`` or an extended-protocol ``Execute``; its SQL text is
  taken from the ``Query``, or from the ``Parse`` of the statement bound to the portal.
  Each statement is charged the round trips made since the previous statement of its
  connection (so a driver's separate Parse and Describe turns count for the statement
  they prepare), which keeps per-statement figures exact across counting windows.

Counts cover every connection made through one relay; a flag has one connection at a
time, so one relay per flag gives that flag's figures. Plain-text connections only
(``sslmode=disable``; the relay cannot read TLS).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["WireCounter", "WireCounts"]

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


@dataclass(frozen=True)
class WireCounts:
    """Totals seen by a relay so far; subtract two of them to get a window's figures."""

    turns: int = 0
    statements: Counter[str] = field(default_factory=Counter)  # by kind
    round_trips: Counter[str] = field(default_factory=Counter)  # charged to statements, by kind
    spread: Counter[tuple[str, int]] = field(default_factory=Counter)  # statements by (kind, trips)

    def __sub__(self, other: WireCounts) -> WireCounts:
        statements = Counter(self.statements)
        statements.subtract(other.statements)
        round_trips = Counter(self.round_trips)
        round_trips.subtract(other.round_trips)
        spread = Counter(self.spread)
        spread.subtract(other.spread)
        return WireCounts(self.turns - other.turns, +statements, +round_trips, +spread)

    def median_round_trips(self, kind: str) -> float:
        """The median number of round trips of one statement of ``kind`` (nan if none)."""
        trips = sorted(n for (k, n), many in self.spread.items() if k == kind for _ in range(many))
        return float(trips[len(trips) // 2]) if trips else float("nan")

    @property
    def total_statements(self) -> int:
        return sum(self.statements.values())


class _Side:
    """One client connection and its upstream, with the client stream's parse state."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.pending = bytearray()
        self.started = False  # past the untyped start-up messages
        self.client_spoke_last = False
        self.uncharged_turns = 0
        self.prepared: dict[bytes, str] = {}
        self.portals: dict[bytes, str] = {}


class WireCounter:
    """Relay from 127.0.0.1:<ephemeral port> to ``target`` ((host, port) or a Unix socket
    path), counting with ``classify(sql) -> kind``; a context manager that stops it."""

    def __init__(
        self, target: tuple[str, int] | str, classify: Callable[[str], str] | None = None
    ) -> None:
        self._target = target
        self._classify = classify or (lambda sql: "statement")
        self._lock = threading.Lock()
        self._turns = 0
        self._statements: Counter[str] = Counter()
        self._round_trips: Counter[str] = Counter()
        self._spread: Counter[tuple[str, int]] = Counter()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self._wake_read, self._wake_write = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._sides: list[_Side] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wire counter", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def counts(self) -> WireCounts:
        with self._lock:
            return WireCounts(
                self._turns, Counter(self._statements), Counter(self._round_trips),
                Counter(self._spread),
            )  # fmt: skip

    def close(self) -> None:
        """Stop relaying and close every connection; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        os.write(self._wake_write, b"!")
        self._thread.join(5)
        for side in self._sides:
            side.client.close()
            side.server.close()
        self._listener.close()
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def __enter__(self) -> WireCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect_upstream(self) -> socket.socket:
        if isinstance(self._target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self._target)
        else:
            upstream = socket.create_connection(self._target, timeout=10)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.settimeout(None)
        return upstream

    def _run(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                if self._stopping:
                    return
                if key.fileobj is self._listener:
                    self._accept()
                elif key.data is not None:
                    side, from_client = key.data
                    self._pump(side, from_client)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            server = self._connect_upstream()
        except OSError:
            client.close()
            return
        side = _Side(client, server)
        self._sides.append(side)
        self._selector.register(client, selectors.EVENT_READ, (side, True))
        self._selector.register(server, selectors.EVENT_READ, (side, False))

    def _pump(self, side: _Side, from_client: bool) -> None:
        source, sink = (side.client, side.server) if from_client else (side.server, side.client)
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(side)
            return
        if from_client:
            with self._lock:
                if not side.client_spoke_last:
                    self._turns += 1
                    side.uncharged_turns += 1
                side.client_spoke_last = True
                self._read_frontend(side, data)
        else:
            side.client_spoke_last = False
        try:
            sink.sendall(data)  # counted before forwarding: the answer cannot overtake it
        except OSError:
            self._drop(side)

    def _drop(self, side: _Side) -> None:
        for sock in (side.client, side.server):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
        with contextlib.suppress(ValueError):
            self._sides.remove(side)

    def _read_frontend(self, side: _Side, data: bytes) -> None:
        side.pending += data
        while True:
            if not side.started:
                if len(side.pending) < 8:
                    return
                (length, code) = struct.unpack("!ii", side.pending[:8])
                if len(side.pending) < length:
                    return
                del side.pending[:length]
                if code not in (SSL_REQUEST, GSSENC_REQUEST):
                    side.started = True
                    side.uncharged_turns = 0  # connection start-up is no statement's
                continue
            if len(side.pending) < 5:
                return
            kind = bytes(side.pending[0:1])
            (length,) = struct.unpack("!i", side.pending[1:5])
            if len(side.pending) < 1 + length:
                return
            body = bytes(side.pending[5 : 1 + length])
            del side.pending[: 1 + length]
            self._message(side, kind, body)

    def _message(self, side: _Side, kind: bytes, body: bytes) -> None:
        if kind == b"Q":
            self._executed(side, body.rstrip(b"\0").decode(errors="replace"))
        elif kind == b"P":
            name, _, rest = body.partition(b"\0")
            side.prepared[name] = rest.partition(b"\0")[0].decode(errors="replace")
        elif kind == b"B":
            portal, _, rest = body.partition(b"\0")
            side.portals[portal] = side.prepared.get(rest.partition(b"\0")[0], "?")
        elif kind == b"E":
            self._executed(side, side.portals.get(body.partition(b"\0")[0], "?"))

    def _executed(self, side: _Side, sql: str) -> None:
        kind = self._classify(sql)
        self._statements[kind] += 1
        self._round_trips[kind] += side.uncharged_turns
        self._spread[kind, side.uncharged_turns] += 1
        side.uncharged_turns = 0
