"""Chaos harness: contenders behind TCP proxies, injected faults, a history check.

Run ``python -m leadership.chaos --help``. Modules: :mod:`.cluster` (a throwaway
PostgreSQL), :mod:`.proxy` (per-contender TCP proxies that partition or delay),
:mod:`.contender` (the child process: a flag and a witness), :mod:`.faults` (the seeded
fault schedule), :mod:`.runner` (runs it all and reports), :mod:`.timeline` (SVG).
"""
