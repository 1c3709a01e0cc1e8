"""Run a chaos experiment: a throwaway cluster, N contenders behind proxies, faults.

:func:`run` starts everything, injects the seeded schedule for ``seconds``, stops every
contender gracefully, and always tears down the contenders, proxies and cluster, on error
too. It returns the witness histories and the injected faults for :mod:`.report`.

With the ``failover`` kind the cluster is a replicated pair: a synchronous standby on a
second port, each contender reaching each node through its own proxy (a partition cuts
both) with ``target_session_attrs=read-write``. A failover crashes the primary
(``stop -m immediate``), promotes the standby and builds a new standby from it on the
crashed node's port; the other kinds hit whichever node is the primary.

Group mode (``groups`` > 0): the contenders are groups (:func:`leadership.new_group`) over
the same ``groups`` flags; the first ``balancers`` of them balance the list, the others
add a flag for each name, and with ``single`` one more contender holds a single flag
(``new_flag()``) for the first name. Each process witnesses each of its flags in its own
log, so each flag has its own histories. Faults take the flags in turn as their
target: a process fault aimed at the holder hits the target flag's holder, ``steal``
takes the target flag's row, and the report measures failover on the target flag.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import child_env
from harness.cluster import Cluster
from harness.proxy import TcpProxy
from leadership.store import TABLE
from leadership.testing import RECORD, History, Kind, read_history
from leadership.timing import SAFETY_MARGIN, Timing

from .contender import flag_log
from .faults import KINDS, Fault, FaultSpec, schedule

__all__ = ["Experiment", "Settings", "load", "run", "save"]

log = logging.getLogger("harness.chaos")

RAISED_FRESHNESS_NS = 100_000_000
"""A witness log whose last run record is a START or TICK younger than this is raised."""


@dataclass(frozen=True)
class Settings:
    """What to run. Durations in seconds; ``timeout`` None means the largest the timing
    rule allows for ``interval`` and ``jitter``. Injection stops after ``seconds`` or
    ``max_faults`` faults, whichever comes first."""

    seconds: float = 60.0
    max_faults: int | None = None
    seed: int = 1
    contenders: int = 4
    interval: float = 1.0
    jitter: float = 0.2
    timeout: float | None = None
    kinds: tuple[str, ...] = KINDS
    holder_bias: float = 0.8
    unsafe: bool = False
    max_gap: float | None = None
    name: str = "chaos"
    workdir: Path | None = None
    contender_log_level: str = "WARNING"
    witness_sleep: float = 0.0
    groups: int = 0
    balancers: int | None = None
    single: bool = False

    @property
    def grouped(self) -> bool:
        """True in group mode."""
        return self.groups > 0

    @property
    def flag_names(self) -> tuple[str, ...]:
        """The flags contended for: ``name-0`` ... in group mode, else ``name``."""
        if not self.grouped:
            return (self.name,)
        return tuple(f"{self.name}-{i}" for i in range(self.groups))

    @property
    def slots(self) -> int:
        """Contender slots: the contenders, and the single flag in group mode."""
        return self.contenders + (1 if self.grouped and self.single else 0)

    def role(self, slot: int) -> str:
        """A slot's role: ``flag`` outside group mode, else ``balance``, ``flags`` or
        ``single`` (see :mod:`.contender`)."""
        if not self.grouped:
            return "flag"
        if slot >= self.contenders:
            return "single"
        balancers = self.balancers if self.balancers is not None else (self.contenders + 1) // 2
        return "balance" if slot < balancers else "flags"

    @property
    def witness_gap(self) -> float:
        """The witness's ``max_gap``: half the flag's safety margin unless given."""
        return self.max_gap if self.max_gap is not None else SAFETY_MARGIN / 2 * self.interval

    @property
    def flag_timeout(self) -> float:
        if self.timeout is not None:
            return self.timeout
        allowed = Timing(self.interval, self.jitter, 1e-9).max_timeout
        return int(allowed * 1000) / 1000


@dataclass
class Contender:
    """One contender process (``slot`` is its lane; each replacement is a new generation);
    ``logs`` its witness log per flag (``log`` is the first)."""

    slot: int
    generation: int
    process: str
    log: Path
    popen: subprocess.Popen[bytes]
    logs: dict[str, Path] = field(default_factory=dict)


@dataclass
class Experiment:
    """Everything a run produced: histories by process, the faults, the window (ns).

    In group mode ``flag_histories`` holds the histories by flag, then by process, and
    ``histories`` those of the first flag (the one a single flag contends for too)."""

    settings: Settings
    histories: dict[str, History]
    slots: dict[str, int]
    faults: list[Fault]
    start: int
    end: int
    workdir: Path
    notes: list[str] = field(default_factory=list)
    flag_histories: dict[str, dict[str, History]] = field(default_factory=dict)

    def for_flag(self, flag: str) -> Experiment:
        """The experiment as seen by one flag (its histories only)."""
        if not self.flag_histories:
            return self
        return dataclasses.replace(self, histories=self.flag_histories[flag])


class ProxyGroup:
    """One contender's proxies, one per node: faults apply to all of them."""

    def __init__(self, ports: list[int]) -> None:
        self.proxies = [TcpProxy(("127.0.0.1", port)) for port in ports]

    @property
    def ports(self) -> list[int]:
        return [proxy.port for proxy in self.proxies]

    def partition(self) -> None:
        for proxy in self.proxies:
            proxy.partition()

    def heal(self) -> None:
        for proxy in self.proxies:
            proxy.heal()

    def delay(self, seconds: float) -> None:
        for proxy in self.proxies:
            proxy.delay(seconds)

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.close()


class Pair:
    """A primary and its synchronous standby on two ports that stay the same across
    failovers."""

    def __init__(self, primary: Cluster) -> None:
        self.primary = primary
        self.builds = 0
        self.standby = self._standby(None)

    @property
    def ports(self) -> list[int]:
        return [self.primary.port, self.standby.port]

    def _standby(self, port: int | None) -> Cluster:
        self.builds += 1
        name = f"standby{self.builds}"
        standby = self.primary.standby(name, port=port)
        standby.settings["wal_retrieve_retry_interval"] = "100ms"  # back soon after a restart
        standby.start()
        self.primary.synchronous(name)
        self.primary.wait_streaming(name, sync=True)
        return standby

    def fail_over(self) -> str:
        """Crash the primary, promote the standby, build a new standby; say how long
        each step took."""
        started = time.monotonic()
        crashed = self.primary
        crashed.stop("immediate")
        self.standby.promote()
        promoted = time.monotonic()
        self.primary = self.standby
        self.primary.synchronous("")  # none to wait for until the new standby streams
        crashed.remove()
        self.standby = self._standby(crashed.port)
        return (
            f"promoted in {(promoted - started) * 1000:.0f} ms, new standby in "
            f"{(time.monotonic() - promoted) * 1000:.0f} ms"
        )

    def remove(self) -> None:
        self.standby.remove()
        self.primary.remove()


class Fleet:
    """The contender processes, one per slot, each behind its own proxies."""

    def __init__(
        self, settings: Settings, cluster: Cluster, proxies: list[ProxyGroup], logdir: Path
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.proxies = proxies
        self.logdir = logdir
        self.live: dict[int, Contender] = {}
        self.all: list[Contender] = []
        self._generations: dict[int, int] = {}

    def spawn(self, slot: int) -> Contender:
        generation = self._generations.get(slot, 0)
        self._generations[slot] = generation + 1
        s = self.settings
        role = s.role(slot)
        prefix = {"flag": "c", "balance": "b", "flags": "g", "single": "s"}[role]
        process = f"{prefix}{slot}.{generation}"
        command = [
            sys.executable,
            "-m",
            "harness.chaos.contender",
            "--dsn",
            self._dsn(slot, process),
            "--process",
            process,
        ]
        if s.grouped:
            names = s.flag_names[:1] if role == "single" else s.flag_names
            logs = {name: flag_log(self.logdir, process, name) for name in names}
            command += ["--names", ",".join(names), "--role", role, "--log-dir", str(self.logdir)]
        else:
            logs = {s.name: self.logdir / f"{process}.log"}
            command += ["--name", s.name, "--log", str(logs[s.name])]
        path = next(iter(logs.values()))
        command += [
            "--interval",
            str(s.interval),
            "--jitter",
            str(s.jitter),
            "--timeout",
            str(s.flag_timeout),
            "--max-gap",
            str(s.witness_gap),
        ]
        command += ["--log-level", s.contender_log_level, "--witness-sleep", str(s.witness_sleep)]
        if s.unsafe:
            command.append("--unsafe")
        with open(self.logdir / f"{process}.err", "wb") as errors:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=errors,
                stderr=errors,
                env=child_env(),
            )
        contender = Contender(slot, generation, process, path, popen, logs)
        self.live[slot] = contender
        self.all.append(contender)
        return contender

    def _dsn(self, slot: int, process: str) -> str:
        ports = self.proxies[slot].ports
        if len(ports) == 1:
            return self.cluster.dsn(ports[0], application_name=process)
        hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
        return (
            f"postgresql://{self.cluster.user}@{hosts}/postgres"
            f"?target_session_attrs=read-write&application_name={process}"
        )

    def raised_now(self, flag: str | None = None) -> list[Contender]:
        """Contenders whose witness shows them raised right now (for ``flag``, default
        the first)."""
        now = time.monotonic_ns()
        name = flag if flag is not None else self.settings.flag_names[0]
        return [
            c for c in self.live.values() if name in c.logs and _raised_in_log(c.logs[name], now)
        ]

    def stop(self, contender: Contender, grace: float = 5.0) -> bool:
        """SIGTERM (graceful close), then SIGKILL after ``grace`` seconds; False when
        it had to be killed."""
        with contextlib.suppress(ProcessLookupError):
            contender.popen.send_signal(signal.SIGCONT)
            contender.popen.terminate()
        try:
            contender.popen.wait(grace)
        except subprocess.TimeoutExpired:
            contender.popen.kill()
            contender.popen.wait()
            return False
        return True

    def stop_all(self, grace: float = 5.0) -> list[str]:
        """Stop every live contender as :meth:`stop` does; the processes that had to be
        killed."""
        for contender in self.live.values():
            with contextlib.suppress(ProcessLookupError):
                contender.popen.send_signal(signal.SIGCONT)
                contender.popen.terminate()
        deadline = time.monotonic() + grace
        killed = []
        for contender in self.live.values():
            try:
                contender.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                contender.popen.kill()
                contender.popen.wait()
                killed.append(contender.process)
        return killed

    def kill_all(self) -> None:
        for contender in self.all:
            if contender.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    contender.popen.kill()
                contender.popen.wait()


def _raised_in_log(path: Path, now: int) -> bool:
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            size -= size % RECORD.size
            start = max(0, size - 16 * RECORD.size)
            file.seek(start)
            data = file.read(size - start)
    except OSError:
        return False
    for code, _before, after in reversed(list(RECORD.iter_unpack(data))):
        if code in (Kind.START, Kind.TICK):
            return bool(now - after < RAISED_FRESHNESS_NS)
        if code == Kind.END:
            return False
    return False


class Admin:
    """The runner's own connection, straight to the server (never read-only)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._conn: Any = None

    def execute(self, sql: str, params: tuple[Any, ...] = (), attempts: int = 50) -> list[Any]:
        for attempt in range(attempts):
            try:
                if self._conn is None:
                    self._conn = self.cluster.connect(timeout=2.0)
                    cursor = self._conn.cursor()
                    cursor.execute("SET default_transaction_read_only = off")
                    cursor.execute("SET statement_timeout = 5000")
                cursor = self._conn.cursor()
                cursor.execute(sql, params)
                return list(cursor.fetchall()) if cursor.description else []
            except Exception:
                self.close()
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)
        return []

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class Injector:
    """Carries out fault specs against the fleet and the cluster."""

    def __init__(
        self,
        settings: Settings,
        fleet: Fleet,
        cluster: Cluster,
        admin: Admin,
        pair: Pair | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.cluster = cluster
        self.admin = admin
        self.pair = pair
        self.injected = 0
        self.notes: list[str] = []

    def target(self) -> str:
        """The flag the next fault aims at: each flag in turn."""
        names = self.settings.flag_names
        return names[self.injected % len(names)]

    def inject(self, spec: FaultSpec) -> Fault:
        flag = self.target()
        self.injected += 1
        raised = self.fleet.raised_now(flag)
        holder = raised[0] if raised else None
        fault = Fault(spec.kind, 0, 0, holder=holder.process if holder else None)
        if self.settings.grouped:
            fault.flag = flag
        victim = self._victim(spec, holder)
        if spec.kind in ("kill", "close", "stop", "partition", "latency", "terminate"):
            fault.victim = victim.process
        getattr(self, "_" + spec.kind)(spec, victim, fault)
        if not fault.end:
            fault.end = time.monotonic_ns()
        return fault

    def _victim(self, spec: FaultSpec, holder: Contender | None) -> Contender:
        live = sorted(self.fleet.live.values(), key=lambda c: c.slot)
        if spec.holder and holder is not None:
            return holder
        others = [c for c in live if c is not holder] or live
        return others[int(spec.pick * len(others))]

    def _kill(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        fault.start = time.monotonic_ns()
        victim.popen.kill()
        victim.popen.wait()
        fault.end = time.monotonic_ns()
        self.fleet.spawn(victim.slot)

    def _close(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        fault.start = time.monotonic_ns()
        if not self.fleet.stop(victim):
            self.notes.append(f"{victim.process} did not exit within 5 s of SIGTERM (killed)")
        fault.end = time.monotonic_ns()
        fault.detail = f"exit {victim.popen.returncode}"
        self.fleet.spawn(victim.slot)

    def _stop(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        fault.start = time.monotonic_ns()
        victim.popen.send_signal(signal.SIGSTOP)
        time.sleep(spec.duration)
        fault.end = time.monotonic_ns()
        victim.popen.send_signal(signal.SIGCONT)
        fault.detail = f"{spec.duration:.2f} s"

    def _partition(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        proxy = self.fleet.proxies[victim.slot]
        fault.start = time.monotonic_ns()
        proxy.partition()
        time.sleep(spec.duration)
        fault.end = time.monotonic_ns()
        proxy.heal()
        fault.detail = f"{spec.duration:.2f} s"

    def _latency(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        proxy = self.fleet.proxies[victim.slot]
        assert isinstance(spec.amount, float)
        fault.start = time.monotonic_ns()
        proxy.delay(spec.amount)
        time.sleep(spec.duration)
        fault.end = time.monotonic_ns()
        proxy.delay(0.0)
        fault.detail = f"+{spec.amount * 1000:.0f} ms each way for {spec.duration:.2f} s"

    def _terminate(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        fault.start = time.monotonic_ns()
        rows = self.admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            (victim.process,),
        )
        fault.detail = f"{rows[0][0]} backend(s)"

    def _restart(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        self.admin.close()
        fault.start = time.monotonic_ns()
        self.cluster.restart(str(spec.amount))
        fault.detail = f"{spec.amount}, {(time.monotonic_ns() - fault.start) / 1e6:.0f} ms"

    def _failover(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        assert self.pair is not None
        self.admin.close()
        fault.start = time.monotonic_ns()
        fault.detail = self.pair.fail_over()
        self.cluster = self.admin.cluster = self.fleet.cluster = self.pair.primary

    def _steal(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        fault.start = time.monotonic_ns()
        rows = self.admin.execute(
            f"UPDATE {TABLE} SET holder = 'thief', version = version + 1, "
            "timestamp = now() WHERE name = %s RETURNING version",
            (fault.flag or self.settings.name,),
        )
        fault.detail = f"version {rows[0][0]}" if rows else "no row"

    def _readonly(self, spec: FaultSpec, victim: Contender, fault: Fault) -> None:
        fault.start = time.monotonic_ns()
        self.admin.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        self.admin.execute("SELECT pg_reload_conf()")
        time.sleep(spec.duration)
        fault.end = time.monotonic_ns()
        self.admin.execute("ALTER SYSTEM RESET default_transaction_read_only")
        self.admin.execute("SELECT pg_reload_conf()")
        fault.detail = f"{spec.duration:.2f} s"


def _wait_until_built(fleet: Fleet, timeout: float) -> bool:
    """Wait until every live contender has built its flags (their BUILT marks are
    written)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_built(log) for c in fleet.live.values() for log in c.logs.values()):
            return True
        time.sleep(0.01)
    return False


def _built(path: Path) -> bool:
    """True once the contender wrote its first record, which is its BUILT mark."""
    try:
        with open(path, "rb") as file:
            data = file.read(RECORD.size)
    except OSError:
        return False
    return len(data) == RECORD.size and RECORD.unpack(data)[0] == Kind.BUILT


def _wait_for_holder(fleet: Fleet, timeout: float, admin: Admin | None = None) -> list[str]:
    """Wait until every flag has a raised contender and, given ``admin``, its row names
    it; the flags still without one at the timeout (empty: all held)."""
    deadline = time.monotonic() + timeout
    waiting = list(fleet.settings.flag_names)
    while True:
        raised = {name: {c.process for c in fleet.raised_now(name)} for name in waiting}
        waiting = [name for name in waiting if not raised[name]]
        if admin is not None and not waiting:
            rows = admin.execute(
                f"SELECT name, holder FROM {TABLE} WHERE name = ANY(%s)", (list(raised),)
            )
            holders = dict(rows)
            waiting = [name for name in raised if holders.get(name) not in raised[name]]
        if not waiting or time.monotonic() >= deadline:
            return waiting
        time.sleep(0.01)


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that clean-up runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(settings: Settings, progress: Any = None) -> Experiment:
    """Run one experiment; see the module docstring. ``progress(text)`` gets news."""
    say = progress or (lambda text: None)
    workdir = settings.workdir or Path(tempfile.mkdtemp(prefix="leadership-chaos-"))
    try:
        return _run(settings, workdir, say)
    except BaseException:
        if settings.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _run(settings: Settings, workdir: Path, say: Any) -> Experiment:
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    faults: list[Fault] = []
    notes: list[str] = []
    specs = schedule(
        settings.seed,
        settings.max_faults if settings.max_faults is not None else 100_000,
        settings.interval,
        settings.flag_timeout,
        settings.kinds,
        settings.holder_bias,
    )
    with _terminate_as_exit(), Cluster() as cluster, contextlib.ExitStack() as stack:
        admin = Admin(cluster)
        pair = Pair(cluster) if "failover" in settings.kinds else None
        if pair is not None:
            stack.callback(pair.remove)
        ports = pair.ports if pair is not None else [cluster.port]
        proxies = [ProxyGroup(ports) for _ in range(settings.slots)]
        for group in proxies:
            stack.callback(group.close)
        fleet = Fleet(settings, cluster, proxies, logdir)
        injector = Injector(settings, fleet, cluster, admin, pair)
        try:
            for slot in range(settings.slots):
                fleet.spawn(slot)
            if not _wait_until_built(fleet, 60.0) or _wait_for_holder(fleet, 30.0):
                raise RuntimeError("the contenders did not start and raise the flags in time")
            start = time.monotonic_ns()
            deadline = time.monotonic() + settings.seconds
            roles = ""
            if settings.grouped:
                roles = " (" + ", ".join(settings.role(i) for i in range(settings.slots)) + ")"
                roles += f" over {settings.groups} flags"
            say(f"cluster on port {cluster.port}, {settings.slots} contenders{roles}, started")
            for spec in specs:
                if time.monotonic() + spec.duration + settings.interval > deadline:
                    break
                fault = injector.inject(spec)
                faults.append(fault)
                time.sleep(0.6 * settings.interval)  # the longest a holder may take to notice
                if not _wait_until_built(fleet, 20.0):
                    notes.append(f"a replacement took over 20 s to start after {fault.kind}")
                aimed = f" flag={fault.flag}" if fault.flag else ""
                say(
                    f"{(fault.start - start) / 1e9:7.2f} s {fault.kind:9}{aimed} "
                    f"victim={fault.victim} holder={fault.holder} {fault.detail}"
                )
                unheld = _wait_for_holder(fleet, 4 * settings.interval + 2.0, admin)
                if unheld:
                    which = f" for {', '.join(unheld)}" if settings.grouped else ""
                    notes.append(
                        f"no holder{which} within {4 * settings.interval + 2:.0f} s after "
                        f"{fault.kind} at {(fault.start - start) / 1e9:.2f} s"
                    )
                time.sleep(spec.pause)
            _wait_for_holder(fleet, 2 * settings.interval)
            end = time.monotonic_ns()
            notes += [
                f"{process} did not exit within 5 s of SIGTERM at the end (killed)"
                for process in fleet.stop_all()
            ]
        finally:
            notes += injector.notes
            fleet.kill_all()
            admin.close()
    slots = {c.process: c.slot for c in fleet.all}
    flag_histories = _read_histories(settings, workdir, slots)
    histories = flag_histories[settings.flag_names[0]]
    experiment = Experiment(
        settings,
        histories,
        slots,
        faults,
        start,
        end,
        workdir,
        notes,
        flag_histories if settings.grouped else {},
    )
    save(experiment)
    return experiment


def _read_histories(
    settings: Settings, workdir: Path, slots: dict[str, int]
) -> dict[str, dict[str, History]]:
    """The histories by flag, then by process, from the logs in ``workdir``."""
    logdir = workdir / "logs"
    if not settings.grouped:
        return {settings.name: {p: read_history(logdir / f"{p}.log", p) for p in slots}}
    found: dict[str, dict[str, History]] = {}
    for name in settings.flag_names:
        found[name] = {}
        for process in slots:
            path = flag_log(logdir, process, name)
            if path.exists():
                found[name][process] = read_history(path, process)
    return found


def save(experiment: Experiment) -> Path:
    """Write ``experiment.json`` (all but the histories, which are the logs) in the workdir."""
    settings = dataclasses.asdict(experiment.settings)
    settings["workdir"] = str(experiment.workdir)
    data = {
        "settings": settings,
        "faults": [dataclasses.asdict(f) for f in experiment.faults],
        "slots": experiment.slots,
        "start": experiment.start,
        "end": experiment.end,
        "notes": experiment.notes,
    }
    path = experiment.workdir / "experiment.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def load(workdir: Path) -> Experiment:
    """Read back an experiment kept with ``--workdir``, to analyse it again."""
    data = json.loads((workdir / "experiment.json").read_text())
    fields = data["settings"]
    fields["workdir"] = Path(fields["workdir"])
    fields["kinds"] = tuple(fields["kinds"])
    settings = Settings(**fields)
    slots: dict[str, int] = data["slots"]
    flag_histories = _read_histories(settings, workdir, slots)
    faults = [Fault(**f) for f in data["faults"]]
    return Experiment(
        settings,
        flag_histories[settings.flag_names[0]],
        slots,
        faults,
        data["start"],
        data["end"],
        workdir,
        data["notes"],
        flag_histories if settings.grouped else {},
    )
