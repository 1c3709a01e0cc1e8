"""A TCP proxy on loopback that injects network faults: a real network fault, not a fake
server.

``TcpProxy(target)`` listens on ``127.0.0.1:proxy.port`` and relays every connection to
``target``. Faults apply to bytes arriving from the moment the call returns:

- ``partition()`` holds every byte in both directions, and holds the upstream connect
  of new connections (they are accepted, then nothing happens), as a network that
  buffers packets;
- ``hold_replies()`` holds only the server's replies: requests still reach the server
  and run, the client never hears back;
- ``heal()`` ends both holds and delivers the held bytes, in order;
- ``delay(seconds)`` delays each chunk, in each direction, by ``seconds`` (0 to end);
- ``drip_replies(seconds)`` delivers the server's replies one byte every ``seconds`` (0 to
  end): each socket read succeeds, the reply never completes in time;
- ``close()`` stops listening and cuts every connection (idempotent).

``freeze()`` and ``thaw()`` are other names for ``partition()`` and ``heal()``. The
control methods are thread-safe and return once the change is in force. Each proxy runs
an asyncio loop on its own daemon thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["TcpProxy"]

T = TypeVar("T")
CHUNK = 65536
CONTROL_TIMEOUT = 10.0
"""Seconds a control call waits for the proxy's loop."""


class _Pipe:
    """One direction of one connection: chunks (or None for EOF) with release times."""

    def __init__(
        self,
        held: Callable[[], bool],
        latency: Callable[[], float],
        drip: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._held = held
        self._latency = latency
        self._drip = drip
        self._queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        self.changed = asyncio.Event()

    def _push(self, data: bytes | None) -> None:
        self._queue.append((time.monotonic() + self._latency(), data))
        self.changed.set()

    async def pump_in(self, reader: asyncio.StreamReader) -> None:
        """Queue what ``reader`` yields, until EOF or an error (queued as EOF)."""
        try:
            while data := await reader.read(CHUNK):
                self._push(data)
        except OSError:
            pass
        self._push(None)

    async def pump_out(self, writer: asyncio.StreamWriter) -> None:
        """Write queued chunks when released and not held; close ``writer`` at EOF."""
        try:
            while True:
                if not self._queue or self._held():
                    self.changed.clear()
                    await self.changed.wait()
                    continue
                release, data = self._queue[0]
                wait = release - time.monotonic()
                if wait > 0:
                    self.changed.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), wait)
                    continue
                self._queue.popleft()
                if data is None:
                    return
                drip = self._drip()
                if drip > 0 and len(data) > 1:  # one byte now, the rest a little later
                    self._queue.appendleft((time.monotonic() + drip, data[1:]))
                    data = data[:1]
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


class TcpProxy:
    """Relays ``127.0.0.1:port`` to ``target`` (host, port) with faults on command; see
    the module docstring. ``with TcpProxy(target) as proxy:`` closes it at the end."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._requests_held = False
        self._replies_held = False
        self._latency = 0.0
        self._drip = 0.0
        self._closed = False
        self._pipes: set[_Pipe] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._connectable = asyncio.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"proxy to {target[0]}:{target[1]}", daemon=True
        )
        self._thread.start()
        try:
            self._run(self._listen())
        except BaseException:
            self._stop_loop()
            raise

    def partition(self) -> None:
        """Hold every byte both ways, and new connections' upstream connect."""
        self._set(requests=True, replies=True)

    def hold_replies(self) -> None:
        """Hold the server's replies only; requests still reach the server."""
        self._set(replies=True)

    def heal(self) -> None:
        """End every hold; the held bytes are then delivered in order."""
        self._set(requests=False, replies=False)

    freeze = partition
    thaw = heal

    def delay(self, seconds: float) -> None:
        """Delay every chunk arriving from now on by ``seconds``, each way (0 to end)."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds}")
        self._set(latency=seconds)

    def drip_replies(self, seconds: float) -> None:
        """Deliver the server's replies one byte every ``seconds`` from now on (0 to end)."""
        if seconds < 0:
            raise ValueError(f"drip must be >= 0 seconds, got {seconds}")
        self._set(drip=seconds)

    def close(self) -> None:
        """Stop listening, cut every connection and stop the loop thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._run(self._shut(), timeout=5.0)
        self._stop_loop()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Everything below runs on the proxy's loop, except _run, _set and _stop_loop.

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = CONTROL_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def _set(
        self,
        requests: bool | None = None,
        replies: bool | None = None,
        latency: float | None = None,
        drip: float | None = None,
    ) -> None:
        if self._closed:
            raise RuntimeError("the proxy is closed")

        async def apply() -> None:
            if requests is not None:
                self._requests_held = requests
            if replies is not None:
                self._replies_held = replies
            if latency is not None:
                self._latency = latency
            if drip is not None:
                self._drip = drip
            if self._requests_held:
                self._connectable.clear()
            else:
                self._connectable.set()
            for pipe in self._pipes:
                pipe.changed.set()

        self._run(apply())

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()

    async def _listen(self) -> None:
        self._connectable.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _latency_now(self) -> float:
        return self._latency

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up = _Pipe(lambda: self._requests_held, self._latency_now)
        down = _Pipe(lambda: self._replies_held, self._latency_now, lambda: self._drip)
        self._pipes |= {up, down}
        children = [asyncio.create_task(up.pump_in(reader))]
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._connectable.wait()
            try:
                upstream_reader, upstream = await asyncio.open_connection(*self.target)
            except OSError:
                return
            children.append(asyncio.create_task(up.pump_out(upstream)))
            children.append(asyncio.create_task(down.pump_in(upstream_reader)))
            children.append(asyncio.create_task(down.pump_out(writer)))
            await asyncio.gather(*children[1:], return_exceptions=True)
        except asyncio.CancelledError:
            pass  # close() cuts the connection: end normally (asyncio logs cancelled handlers)
        finally:
            for child in children:
                child.cancel()
            writer.close()
            if upstream is not None:
                upstream.close()
            await asyncio.gather(*children, return_exceptions=True)
            self._pipes -= {up, down}
            self._tasks.discard(task)

    async def _shut(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
