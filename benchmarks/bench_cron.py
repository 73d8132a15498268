"""Time cron parsing and next-occurrence search against croniter and cronsim.

    python benchmarks/bench_cron.py [--quick]

For every expression: the best-of-N time of one ``parse`` and of 1000 iterated
``next`` calls (in UTC), with each peer's time divided by ours (``x2.0`` means
the peer is twice as slow). A peer that rejects an expression is shown as
``n/a``; croniter and cronsim read ``L``, ``W``, ``#`` and wrapped ranges with
their own rules, so a row may compare slightly different schedules.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncjobs.cron import CronExpression


def _optional(module: str, name: str) -> Any:
    """A peer's class, or None when that peer is not installed."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        return None


croniter = _optional("croniter", "croniter")
CronSim = _optional("cronsim", "CronSim")

EXPRESSIONS = [
    "* * * * *",
    "*/5 * * * *",
    "0 9 * * MON-FRI",
    "0 0 1 * *",
    "0 0 L * *",
    "0 12 15W * *",
    "0 0 * * FRI#3",
    "30 2 29 2 *",
    "0 0 1 1 *",
    "*/7 3-22/3 * * SAT-TUE",
]
# The same search on a daylight-saving wall clock (1000 steps of */5 cross no
# transition; the daily and hourly ones cross the March 2024 spring forward).
ZONED = ZoneInfo("America/New_York")
ZONED_EXPRESSIONS = ["*/5 * * * *", "0 * * * *", "0 9 * * MON-FRI"]

START = datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)


def best_of(func: Callable[[], object], repeat: int, number: int) -> float:
    """Seconds per call: the fastest of ``repeat`` rounds of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            func()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def ours_parse(expr: str) -> Callable[[], object]:
    return lambda: CronExpression.parse(expr)


def ours_next(expr: str, steps: int, start: datetime) -> Callable[[], object]:
    parsed = CronExpression.parse(expr)

    def run() -> object:
        t: datetime | None = start
        for _ in range(steps):
            assert t is not None
            t = parsed.next(t)
        return t

    return run


def croniter_parse(expr: str) -> Callable[[], object]:
    assert croniter is not None
    return lambda: croniter(expr, START)


def croniter_next(expr: str, steps: int, start: datetime) -> Callable[[], object]:
    assert croniter is not None

    def run() -> object:
        it = croniter(expr, start)
        t = None
        for _ in range(steps):
            t = it.get_next(datetime)
        return t

    return run


def cronsim_parse(expr: str) -> Callable[[], object]:
    assert CronSim is not None
    return lambda: CronSim(expr, START)


def cronsim_next(expr: str, steps: int, start: datetime) -> Callable[[], object]:
    assert CronSim is not None

    def run() -> object:
        it = CronSim(expr, start)
        t = None
        for _ in range(steps):
            t = next(it)
        return t

    return run


def accepts(make: Callable[[], Callable[[], object]]) -> bool:
    try:
        make()()
    except Exception:
        return False
    return True


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    return f"{seconds * 1e3:8.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, 200 next calls")
    args = parser.parse_args()
    repeat = 3 if args.quick else 7
    parse_number = 200 if args.quick else 2000
    steps = 200 if args.quick else 1000

    peers: list[
        tuple[str, Callable[..., Callable[[], object]], Callable[..., Callable[[], object]]]
    ]
    peers = []
    if croniter is not None:
        peers.append(("croniter", croniter_parse, croniter_next))
    if CronSim is not None:
        peers.append(("cronsim", cronsim_parse, cronsim_next))

    header = f"{'expression':<24} {'op':<15} {'ours':>11}"
    for name, _, _ in peers:
        header += f" {name:>10}"
    print(header)
    print("-" * len(header))
    rounds = 5 if args.quick else 20
    rows: list[tuple[str, str, Callable[[], object], list[tuple[str, Any]], int]] = []
    for expr in EXPRESSIONS:
        rows.append(
            (
                expr,
                "parse",
                ours_parse(expr),
                [(name, functools.partial(p, expr)) for name, p, _ in peers],
                parse_number,
            )
        )
        rows.append(
            (
                expr,
                f"next x{steps}",
                ours_next(expr, steps, START),
                [(name, functools.partial(n, expr, steps, START)) for name, _, n in peers],
                rounds,
            )
        )
    zoned_start = START.astimezone(ZONED)
    for expr in ZONED_EXPRESSIONS:
        rows.append(
            (
                expr,
                f"next x{steps} NY",
                ours_next(expr, steps, zoned_start),
                [(name, functools.partial(n, expr, steps, zoned_start)) for name, _, n in peers],
                rounds,
            )
        )
    slower: list[str] = []
    for expr, op, ours, peer_makers, number in rows:
        ours_time = best_of(ours, repeat, number)
        line = f"{expr:<24} {op:<15} {fmt_time(ours_time):>11}"
        for name, make in peer_makers:
            if not accepts(make):
                line += f" {'n/a':>10}"
                continue
            peer_time = best_of(make(), repeat, number)
            ratio = peer_time / ours_time
            if ratio < 1:
                slower.append(f"{expr} {op} vs {name}")
            line += f" {'x' + format(ratio, '.1f'):>10}"
        print(line)
    print()
    print("ratios are peer time / our time; n/a = the peer cannot parse the expression")
    if slower:
        print("slower than a peer on:", "; ".join(slower))
        return 1
    print("faster than every peer on every expression it accepts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
