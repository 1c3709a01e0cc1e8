"""``python -m harness.chaos``: run a chaos experiment and report it.

Exit status: 0 when safe, 1 on any overlap (or a deposed holder raised on resume),
2 when the harness itself failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import traceback
from pathlib import Path

from .faults import KINDS
from .report import summarise
from .runner import Settings, load, run
from .timeline import write


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m harness.chaos",
        description="Contenders on a throwaway PostgreSQL behind TCP proxies, under seeded "
        "faults; checks that at most one process is raised at any instant.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="fault injection time")
    parser.add_argument("--faults", type=int, help="stop after this many faults")
    parser.add_argument("--seed", type=int, default=1, help="reproduces the fault schedule")
    parser.add_argument("--contenders", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0, help="flag interval, seconds")
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument(
        "--timeout", type=float, default=None, help="default: the largest the timing rule allows"
    )
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated fault kinds (default: {','.join(KINDS)}; also: failover,"
        " a replicated pair whose primary crashes and whose standby is promoted)",
    )
    parser.add_argument(
        "--holder-bias", type=float, default=0.8, help="chance a process fault hits the holder"
    )
    parser.add_argument("--unsafe", action="store_true", help="use a cached-boolean flag")
    parser.add_argument("--svg", type=Path, help="write a timeline picture here")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--workdir", type=Path, help="keep the witness logs here")
    parser.add_argument(
        "--contender-log-level",
        default="WARNING",
        help="log level of the contenders' flags (their logs go to WORKDIR/logs/*.err)",
    )
    parser.add_argument(
        "--witness-sleep",
        type=float,
        default=0.0,
        help="seconds each witness sleeps between raised() calls (default 0: a tight loop, "
        "one busy core per contender)",
    )
    parser.add_argument(
        "--reanalyse",
        type=Path,
        metavar="WORKDIR",
        help="do not run: report again on an experiment kept with --workdir",
    )
    parser.add_argument(
        "--groups",
        type=int,
        default=0,
        metavar="N",
        help="group mode: each contender is a group over the same N flags (chaos-0 ...); "
        "the report checks each flag (default 0: one single flag per contender)",
    )
    parser.add_argument(
        "--balancers",
        type=int,
        help="group mode: how many contenders balance() the flags; the others add a flag "
        "for each name (default: half of them, rounded up)",
    )
    parser.add_argument(
        "--single",
        action="store_true",
        help="group mode: one more contender, a single new_flag() for the first flag",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.groups < 0 or (args.balancers is not None and args.balancers < 0):
        print("--groups and --balancers must not be negative", file=sys.stderr)
        return 2
    if (args.balancers is not None or args.single) and not args.groups:
        print("--balancers and --single need --groups", file=sys.stderr)
        return 2
    if args.unsafe and args.groups:
        print("--unsafe is for single flags only (not with --groups)", file=sys.stderr)
        return 2
    settings = Settings(
        seconds=args.seconds,
        max_faults=args.faults,
        seed=args.seed,
        contenders=args.contenders,
        interval=args.interval,
        jitter=args.jitter,
        timeout=args.timeout,
        kinds=tuple(k.strip() for k in args.kinds.split(",") if k.strip()),
        holder_bias=args.holder_bias,
        unsafe=args.unsafe,
        workdir=args.workdir,
        contender_log_level=args.contender_log_level,
        witness_sleep=args.witness_sleep,
        groups=args.groups,
        balancers=args.balancers,
        single=args.single,
    )

    def progress(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    try:
        experiment = load(args.reanalyse) if args.reanalyse else run(settings, progress)
    except Exception:
        traceback.print_exc()
        return 2
    try:
        summary = summarise(experiment)
        print(summary.text(), flush=True)
        if args.json:
            args.json.write_text(json.dumps(summary.to_json(), indent=1) + "\n")
        if args.svg:
            caption = (
                f"{summary.overlaps} overlaps, availability {summary.availability * 100:.0f} %"
            )
            first = experiment.settings.flag_names[0]
            if experiment.flag_histories:
                caption += f"; flag {first} shown, of {len(experiment.flag_histories)}"
            write(experiment.for_flag(first), args.svg, caption=caption)
    finally:
        if args.workdir is None and args.reanalyse is None:
            shutil.rmtree(experiment.workdir, ignore_errors=True)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
