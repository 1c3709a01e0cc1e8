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
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
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
            write(experiment, args.svg, caption=caption)
    finally:
        if args.workdir is None and args.reanalyse is None:
            shutil.rmtree(experiment.workdir, ignore_errors=True)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
