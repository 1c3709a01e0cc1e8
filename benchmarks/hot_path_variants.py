"""Where the time of ``flag.raised()`` goes: ``python benchmarks/hot_path_variants.py``.

Builds copies of ``leadership/_clock.pyx`` and ``benchmarks/_baseline.pyx`` into
``benchmarks/_build/variants/`` with Cython's ``binding`` directive on (Cython 3's
default, as shipped) and off, and times their methods called on an instance of the
extension type itself and on an instance of a Python subclass (as ``Flag(Lease)`` is).
Also times the raw C cost of ``clock_gettime`` for several clocks, in a C loop.
Nothing in ``leadership/`` is changed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import hot_path  # noqa: E402
from baseline_build import BUILD, load_modules  # noqa: E402

VARIANTS = BUILD / "variants"

CLOCK_COSTS = '''# cython: language_level=3
"""ns per clock_gettime() call in a C loop, per clock id."""

cdef extern from "<time.h>":
    ctypedef int clockid_t
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t, timespec *) nogil


def per_call_ns(int clock, long calls):
    cdef timespec ts, start, stop
    cdef long i
    cdef long long total = 0
    clock_gettime(1, &start)
    for i in range(calls):
        clock_gettime(clock, &ts)
        total += ts.tv_nsec
    clock_gettime(1, &stop)
    return ((stop.tv_sec - start.tv_sec) * 1e9 + (stop.tv_nsec - start.tv_nsec)) / calls
'''

CLOCKS = {
    "CLOCK_BOOTTIME": 7,
    "CLOCK_MONOTONIC": 1,
    "CLOCK_MONOTONIC_COARSE": 6,
    "CLOCK_REALTIME": 0,
}


def _with_binding(source: str, binding: bool) -> str:
    header, rest = source.split("\n", 1)
    assert header.startswith("# cython:"), header
    header = re.sub(r",?\s*binding=\w+", "", header) + f", binding={binding}"
    return header + "\n" + rest


def _write(name: str, text: str) -> Path:
    path = VARIANTS / f"{name}.pyx"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def main() -> None:
    VARIANTS.mkdir(parents=True, exist_ok=True)
    clock = (HERE.parent / "leadership" / "_clock.pyx").read_text()
    baseline = (HERE / "_baseline.pyx").read_text()
    sources = [
        _write("clock_bound", _with_binding(clock, True)),
        _write("clock_unbound", _with_binding(clock, False)),
        _write("noop_bound", _with_binding(baseline, True)),
        _write("noop_unbound", _with_binding(baseline, False)),
        _write("clock_costs", CLOCK_COSTS),
    ]
    clock_bound, clock_unbound, noop_bound, noop_unbound, costs = load_modules(sources, VARIANTS)
    namespace: dict[str, Any] = {}
    statements: dict[str, str] = {}
    for label, module in (("binding=True", noop_bound), ("binding=False", noop_unbound)):
        sub = type("NoopSub", (module.Noop,), {})
        namespace[f"n{len(namespace)}"] = module.Noop()
        statements[f"no-op, {label}, exact type"] = f"n{len(namespace) - 1}.noop()"
        namespace[f"n{len(namespace)}"] = sub()
        statements[f"no-op, {label}, Python subclass"] = f"n{len(namespace) - 1}.noop()"
    for label, module in (("binding=True", clock_bound), ("binding=False", clock_unbound)):
        for kind, cls in (
            ("exact type", module.Lease),
            ("Python subclass", type("LeaseSub", (module.Lease,), {})),
        ):
            lease = cls()
            lease._extend(module.now_ns(), 10**15)
            key = f"l{len(namespace)}"
            namespace[key] = lease
            statements[f"Lease.raised(), {label}, {kind}"] = f"{key}.raised()"
    statements["empty loop"] = "pass"
    keyed = {f"s{index}": statement for index, statement in enumerate(statements.values())}
    labels = dict(zip(keyed, statements, strict=True))
    result = hot_path.call_costs(keyed, namespace, repeats=300, number=20_000)
    base = next(key for key, label in labels.items() if label.startswith("no-op, binding=True, e"))
    print(f"{'statement (300 x 20,000 calls, fastest batch)':52} {'ns/call':>8} {'x no-op':>8}")
    for key, label in labels.items():
        print(f"{label:52} {result.fastest[key]:8.1f} {result.ratio(key, base):8.2f}")
    print()
    for name, clock_id in CLOCKS.items():
        best = min(costs.per_call_ns(clock_id, 200_000) for _ in range(30))
        print(f"C loop: clock_gettime({name}) {best:6.1f} ns")


if __name__ == "__main__":
    main()
