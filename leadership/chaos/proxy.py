"""Small TCP proxies on loopback that can partition a contender or slow it down.

All proxies of a :class:`ProxyHub` share one asyncio loop on a daemon thread; their
control methods are thread-safe. A partition holds every byte in both directions (and
new connections' upstream connect) until healed, then lets the backlog through in
order, as a network that buffered packets would. Latency delays every chunk by the
latency in force when it arrived.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Proxy", "ProxyHub"]

T = TypeVar("T")
CHUNK = 65536


class _Pipe:
    """One direction of one connection: a queue of (release time, bytes or EOF)."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.changed = asyncio.Event()

    async def pump_in(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                self.queue.append((time.monotonic() + self.proxy.latency, data or None))
                self.changed.set()
                if not data:
                    return
        except (OSError, asyncio.IncompleteReadError):
            self.queue.append((time.monotonic() + self.proxy.latency, None))
            self.changed.set()

    async def pump_out(self, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                if not self.queue or self.proxy.held:
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                release, data = self.queue[0]
                delay = release - time.monotonic()
                if delay > 0:
                    self.changed.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), delay)
                    continue
                self.queue.popleft()
                if data is None:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


class Proxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream``; see the module docstring."""

    def __init__(self, hub: ProxyHub, upstream: int) -> None:
        self._hub = hub
        self.upstream = upstream
        self.port = 0
        self.held = False
        self.latency = 0.0
        self._pipes: set[_Pipe] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._healed = asyncio.Event()

    async def _start(self) -> None:
        self._healed = asyncio.Event()
        self._healed.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up, down = _Pipe(self), _Pipe(self)
        self._pipes |= {up, down}
        children: list[asyncio.Task[Any]] = []
        try:
            children.append(asyncio.create_task(up.pump_in(reader)))
            await self._healed.wait()
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream
                )
            except OSError:
                return
            children.append(asyncio.create_task(up.pump_out(upstream_writer)))
            children.append(asyncio.create_task(down.pump_in(upstream_reader)))
            children.append(asyncio.create_task(down.pump_out(writer)))
            await asyncio.gather(*children[1:], return_exceptions=True)
        finally:
            for child in children:
                child.cancel()
            writer.close()
            self._pipes -= {up, down}
            self._tasks.discard(task)

    def _wake(self) -> None:
        if self.held:
            self._healed.clear()
        else:
            self._healed.set()
        for pipe in self._pipes:
            pipe.changed.set()

    def partition(self) -> None:
        """Hold every byte both ways from now on, until :meth:`heal`."""
        self._hub.call(self._set, True, None)

    def heal(self) -> None:
        """End a partition and release the held backlog in order."""
        self._hub.call(self._set, False, None)

    def delay(self, seconds: float) -> None:
        """Delay every chunk arriving from now on by ``seconds`` (0 to stop)."""
        self._hub.call(self._set, None, seconds)

    def _set(self, held: bool | None, latency: float | None) -> None:
        if held is not None:
            self.held = held
        if latency is not None:
            self.latency = latency
        self._wake()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()


class ProxyHub:
    """Owns the event loop thread of a set of proxies; ``with ProxyHub() as hub:``."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._proxies: list[Proxy] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coroutine`` on the hub's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def call(self, function: Any, *args: Any) -> None:
        """Run ``function(*args)`` on the loop and wait for it."""

        async def apply() -> None:
            function(*args)

        self.run(apply())

    def proxy(self, upstream: int) -> Proxy:
        """A new proxy to 127.0.0.1:``upstream``, listening on ``proxy.port``."""
        proxy = Proxy(self, upstream)
        self.run(proxy._start())
        self._proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self._proxies:
            with contextlib.suppress(Exception):
                self.run(proxy._close(), timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)

    def __enter__(self) -> ProxyHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
