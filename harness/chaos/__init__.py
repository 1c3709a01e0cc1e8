"""Chaos experiment: contenders behind TCP proxies, injected faults, a history check.

Run ``python -m harness.chaos --help`` from the repository root. It uses
:mod:`harness.cluster` (a throwaway PostgreSQL) and :mod:`harness.proxy` (one fault proxy
per contender). Modules: :mod:`.contender` (the child process: a flag and a witness),
:mod:`.faults` (the seeded fault schedule), :mod:`.runner` (runs it all),
:mod:`.report` (the figures), :mod:`.timeline` (SVG), :mod:`.launch` (a bounded run
in a child process, for tests).
"""
