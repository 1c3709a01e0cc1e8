"""Per-call cost of ``flag.raised()`` against baselines timed in the same run.

Every statement is timed as a user writes it (``flag.raised()``, ``time.monotonic()``)
inside a compiled ``for _ in repeat(None, n)`` loop, like ``timeit``. The statements are
interleaved (a fresh random order in every repeat) so that drift on a shared machine hits
all of them alike. Batches are short (about a millisecond) and many, so that most of them
run without being preempted even on a busy machine; a per-call figure is the fastest
batch (timeit's advice: slower ones measure the neighbours), and a ratio divides two
fastest figures. Per-call figures include the loop's own step (row "empty loop"), as
``python -m timeit`` reports them.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

__all__ = ["CallCosts", "allocation_peak", "call_costs", "thread_scaling"]

Loop = Callable[[Iterable[None]], None]


def compile_loop(statement: str, namespace: dict[str, Any]) -> Loop:
    """``def loop(it): for _ in it: <statement>`` with globals ``namespace``."""
    scope = dict(namespace)
    source = f"def loop(_it):\n    for _ in _it:\n        {statement}\n"
    exec(compile(source, f"<benchmark {statement}>", "exec"), scope)
    loop: Loop = scope["loop"]
    return loop


def _time(loop: Loop, number: int) -> float:
    started = time.perf_counter_ns()
    loop(repeat(None, number))
    return (time.perf_counter_ns() - started) / number


@dataclass(frozen=True)
class CallCosts:
    """Per-call nanoseconds by statement key (fastest and median batch)."""

    fastest: dict[str, float]
    median: dict[str, float]
    repeats: int
    number: int

    def ratio(self, top: str, bottom: str) -> float:
        """Fastest per-call cost of ``top`` over that of ``bottom``."""
        return self.fastest[top] / self.fastest[bottom]


def call_costs(
    statements: dict[str, str],
    namespace: dict[str, Any],
    *,
    repeats: int,
    number: int,
    check: Callable[[], None] = lambda: None,
) -> CallCosts:
    """Time each statement ``repeats`` times ``number`` calls, interleaved. ``check()``
    runs after each repeat (to assert the flags are still in the state being measured)."""
    loops = {key: compile_loop(statement, namespace) for key, statement in statements.items()}
    for loop in loops.values():
        loop(repeat(None, 1000))  # let the interpreter specialise the call sites
    samples: dict[str, list[float]] = {key: [] for key in loops}
    order = list(loops)
    shuffle = random.Random(4).shuffle
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            shuffle(order)
            for key in order:
                samples[key].append(_time(loops[key], number))
            check()
    finally:
        if enabled:
            gc.enable()
    return CallCosts(
        fastest={key: min(values) for key, values in samples.items()},
        median={key: statistics.median(values) for key, values in samples.items()},
        repeats=repeats,
        number=number,
    )


def allocation_peak(statement: str, namespace: dict[str, Any], calls: int, tries: int = 7) -> int:
    """Bytes by which tracemalloc's peak rose over ``calls`` runs of ``statement``.

    Any allocation made by the statement raises the peak above the starting level, even
    when it is freed at once; 0 means no traced allocation at all. Other threads are kept
    out for the duration (a long GIL switch interval); the least of ``tries`` runs is
    returned, so a stray allocation by another thread cannot fake a result. (Allocator
    calls are traced; free-list reuse, e.g. of floats, is not.)
    """
    loop = compile_loop(statement, namespace)
    loop(repeat(None, 1000))
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    interval = sys.getswitchinterval()
    best: int | None = None
    try:
        for _ in range(tries):
            sys.setswitchinterval(60.0)
            try:
                iterations = repeat(None, calls)
                tracemalloc.reset_peak()
                before = tracemalloc.get_traced_memory()[0]
                loop(iterations)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                sys.setswitchinterval(interval)
            growth = max(0, peak - before)
            best = growth if best is None else min(best, growth)
            time.sleep(0.01)
    finally:
        if started_here:
            tracemalloc.stop()
    assert best is not None
    return best


@dataclass(frozen=True)
class ThreadScaling:
    """Per-call cost with one thread and with ``threads`` threads calling at once, in
    thread CPU nanoseconds (what the calls cost, whoever else wants the CPU) and in wall
    nanoseconds per call (reported only: on a busy machine a process with more runnable
    threads gets a different share of the CPUs)."""

    single_ns: float
    threaded_ns: float
    ratio: float  # threaded_ns / single_ns, fastest repeats
    single_wall_ns: float
    threaded_wall_ns: float
    threads: int


def thread_scaling(
    statement: str, namespace: dict[str, Any], *, threads: int, number: int, repeats: int
) -> ThreadScaling:
    """Run ``number`` calls on one thread, then ``number`` calls on each of ``threads``
    threads started together, ``repeats`` times; compare the fastest per-call costs."""
    loop = compile_loop(statement, namespace)
    loop(repeat(None, 1000))
    single_cpu, multi_cpu, single_wall, multi_wall = [], [], [], []
    for _ in range(repeats):
        wall = time.perf_counter_ns()
        cpu = time.thread_time_ns()
        loop(repeat(None, number))
        single_cpu.append((time.thread_time_ns() - cpu) / number)
        single_wall.append((time.perf_counter_ns() - wall) / number)
        barrier = threading.Barrier(threads + 1)
        spent: list[int] = []

        def work(barrier: threading.Barrier = barrier, spent: list[int] = spent) -> None:
            barrier.wait()
            cpu = time.thread_time_ns()
            loop(repeat(None, number))
            spent.append(time.thread_time_ns() - cpu)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for worker in workers:
            worker.start()
        barrier.wait()
        wall = time.perf_counter_ns()
        for worker in workers:
            worker.join()
        multi_wall.append((time.perf_counter_ns() - wall) / (threads * number))
        multi_cpu.append(sum(spent) / (threads * number))
    return ThreadScaling(
        single_ns=min(single_cpu),
        threaded_ns=min(multi_cpu),
        ratio=min(multi_cpu) / min(single_cpu),
        single_wall_ns=min(single_wall),
        threaded_wall_ns=min(multi_wall),
        threads=threads,
    )
