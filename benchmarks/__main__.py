"""``python -m benchmarks [--quick] [--only sqlite,postgres,mysql,pgqueuer,procrastinate]``

Runs every workload on every selected system in one run and writes ``latest.json``,
``latest.md`` and ``latest.png`` into ``benchmarks/results/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
import psutil

from . import _db, _harness, _profile, _raw, _report
from ._subject import Subject

SYSTEMS = ("sqlite", "postgres", "mysql", "pgqueuer", "procrastinate")
WORKLOADS = [
    "enqueue_single", "enqueue_many", "drain_1_worker", "drain_2_workers", "drain_backlog",
    "serial_drain", "latency_same_process", "latency_cross_process",
]  # fmt: skip
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized run (about 3 minutes)")
    parser.add_argument(
        "--only", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (tests)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw driver limits")
    parser.add_argument(
        "--workloads", default="", help=f"comma-separated subset of {','.join(WORKLOADS)}"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    parser.add_argument("--name", default="latest", help="file name stem of the results")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="sample asyncjobs' worker with py-spy during its drains; summaries go here",
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()] or WORKLOADS
    if set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workloads; choose from {', '.join(WORKLOADS)}")
    if args.profile is not None:
        if _profile.py_spy() is None:
            parser.error("--profile needs py-spy (pip install 'asyncjobs[bench]')")
        args.profile.mkdir(parents=True, exist_ok=True)
    return args


def make_subject(key: str, workdir: Path) -> Subject:
    if key in ("sqlite", "postgres", "mysql"):
        from ._ours import AsyncJobsSubject

        return AsyncJobsSubject(key, workdir)
    if key == "pgqueuer":
        from ._pgqueuer import PgQueuerSubject

        return PgQueuerSubject()
    from ._procrastinate import ProcrastinateSubject

    return ProcrastinateSubject()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


Work = Callable[[], Awaitable[dict[str, Any]]]


def _summary(entry: dict[str, Any]) -> str:
    if "error" in entry:
        return str(entry["error"])
    if "p50_ms" in entry:
        return f"p50 {entry['p50_ms']} ms, p99 {entry['p99_ms']} ms"
    if "rate" in entry:
        return f"{entry['rate']:.0f} jobs/s over {entry['jobs']} jobs"
    return ", ".join(f"{k} {v['rate']:.0f}/s" for k, v in entry.items() if "rate" in v)


def workloads(
    subject: Subject,
    sizes: _harness.Sizes,
    profile_dir: Path | None = None,
    *,
    raw_beside: bool = False,
) -> list[tuple[str, Work, int]]:
    """One subject's workloads in run order: (result key, the work, how many runs). With
    ``raw_beside``, each one-worker drain on MariaDB is followed by the raw claim + finish loop
    (100 per round trip), whose rate its result carries as ``raw_claim_finish_100``: the
    target divides the two, so they are taken side by side, not ten minutes apart."""
    h = _harness

    def profile(workload: str) -> Path | None:
        """Where the profile of one of asyncjobs' drains goes, if profiling."""
        if profile_dir is None or subject.key not in ("sqlite", "postgres", "mysql"):
            return None
        return profile_dir / f"{subject.key}-{workload}"

    def parked(work: Work) -> Work:
        async def run() -> dict[str, Any]:
            try:
                return await work()
            finally:
                await subject.park()

        return run

    drain = max(50, int(sizes.drain * subject.drain_fraction))
    serial = max(20, int(sizes.serial * min(1.0, subject.drain_fraction * 2)))
    primary = subject.drain_concurrency[-1]
    plan: list[tuple[str, Work, int]] = [
        ("enqueue_single", lambda: h.enqueue_single(subject, sizes.single), sizes.repeat),
        (
            "enqueue_many",
            lambda: h.enqueue_batches(subject, sizes.batch_total, sizes.batch_size),
            sizes.repeat,
        ),
    ]
    for concurrency in subject.drain_concurrency:
        key = "drain_1_worker" if concurrency == primary else f"drain_1_worker_c{concurrency}"

        async def one_worker(c: int | None = concurrency, key: str = key) -> dict[str, Any]:
            result = await h.drain(subject, drain, concurrency=c, profile=profile(key))
            if raw_beside and subject.key == "mysql" and key == "drain_1_worker":
                raw = await _raw.mysql_claim_finish_beside(drain)
                result["raw_claim_finish_100"] = round(float(raw["rate"]), 1)
            return result

        plan.append((key, one_worker, sizes.repeat))
    plan += [
        (
            "drain_2_workers",
            lambda: h.drain(subject, drain, workers=2, concurrency=primary),
            sizes.repeat,
        ),
        (
            "drain_backlog",
            lambda: h.drain(subject, sizes.backlog, budget=sizes.backlog_budget),
            sizes.repeat,
        ),
        (
            "serial_drain",
            lambda: h.drain(
                subject, serial, serial=True, budget=sizes.budget, profile=profile("serial_drain")
            ),
            sizes.repeat,
        ),
        (
            "latency_same_process",
            lambda: h.latency_same_process(subject, sizes.latency, sizes.budget),
            1,
        ),
        (
            "latency_cross_process",
            lambda: h.latency_cross_process(subject, sizes.latency, sizes.budget),
            1,
        ),
    ]
    return [(key, parked(work), runs) for key, work, runs in plan]


async def run_all(
    plans: dict[str, list[tuple[str, Work, int]]], only: Sequence[str] = WORKLOADS
) -> dict[str, dict[str, Any]]:
    """Every selected workload of every subject's plan (subject key → its ``workloads``).
    Workload by workload, and within one the subjects take turns run by run (A B A B), so the
    figures a ratio divides are taken minutes apart at most: the machine drifts (other
    tenants, the servers' background work) over a run of ten minutes, and a subject measured
    all at once would carry its own window's luck. With several runs the best is kept
    (interference only ever slows a run down), and every run's rate is listed under ``runs``.
    A failure is recorded and the run goes on."""
    by_key = {name: {key: (work, n) for key, work, n in plan} for name, plan in plans.items()}
    # The union of the plans' workloads, each where it comes in the plans (a subject's extra
    # workload runs beside its sibling, not at the end).
    position: dict[str, int] = {}
    for plan in plans.values():
        for index, (key, _work, _runs) in enumerate(plan):
            position[key] = min(index, position.get(key, index))
    order = sorted(position, key=position.__getitem__)
    results: dict[str, dict[str, Any]] = {name: {} for name in plans}
    for key in order:
        if not any(key.startswith(name) for name in only):
            continue
        taking = [name for name in plans if key in by_key[name]]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in taking}
        spent = dict.fromkeys(taking, 0.0)
        for round_ in range(max(by_key[name][key][1] for name in taking)):
            for name in taking:
                work, repeat = by_key[name][key]
                if round_ >= repeat or "error" in results[name].get(key, {}):
                    continue
                clock = time.perf_counter()
                try:
                    runs[name].append(await work())
                except Exception as exc:
                    traceback.print_exc()
                    results[name][key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                spent[name] += time.perf_counter() - clock
        for name in taking:
            done = runs[name]
            if "error" not in results[name].get(key, {}):
                best = max(done, key=lambda r: float(r.get("rate", 0.0)))
                if len(done) > 1:
                    best["runs"] = [round(float(r["rate"]), 1) for r in done]
                results[name][key] = best
            log(f"  {name} {key}: {_summary(results[name][key])} ({spent[name]:.1f} s)")
    return results


async def attempt(
    results: dict[str, Any], key: str, work: Work, only: Sequence[str] = WORKLOADS
) -> None:
    """Run one workload once (if selected); a failure is recorded and the run goes on."""
    if not any(key.startswith(name) for name in only):
        return
    started = time.perf_counter()
    try:
        results[key] = await work()
    except Exception as exc:
        traceback.print_exc()
        results[key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    log(f"  {key}: {_summary(results[key])} ({time.perf_counter() - started:.1f} s)")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def package_versions() -> dict[str, str]:
    found = {}
    for name in ("asyncjobs", "pgqueuer", "procrastinate", "asyncpg", "aiomysql", "anyio"):
        with suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    sizes = (_harness.QUICK if args.quick else _harness.FULL).scaled(args.scale)
    needs_pg = bool({"postgres", "pgqueuer", "procrastinate"} & set(args.systems))
    needs_mysql = "mysql" in args.systems
    started = datetime.now(UTC)
    clock = time.perf_counter()
    await _db.ensure_databases(postgres=needs_pg, mysql=needs_mysql)
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "scale": args.scale,
        "started": started.isoformat(timespec="seconds"),
        "sizes": {k: getattr(sizes, k) for k in sizes.__slots__},
        "machine": machine(),
        "versions": {
            **await _db.server_versions(postgres=needs_pg, mysql=needs_mysql),
            **package_versions(),
        },
        "labels": {},
        "systems": args.systems,
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="asyncjobs-bench-") as tmp:
        subjects = [make_subject(key, Path(tmp)) for key in args.systems]
        for subject in subjects:
            meta["labels"][subject.key] = subject.label
        log(", ".join(subject.label for subject in subjects))
        try:
            for subject in subjects:
                await subject.open()
            plans = {
                s.key: workloads(s, sizes, args.profile, raw_beside=not args.no_raw)
                for s in subjects
            }
            results.update(await run_all(plans, args.workloads))
        finally:
            for subject in subjects:
                await subject.close()
    if not args.no_raw:
        if "postgres" in args.systems:
            log("raw asyncpg")
            meta["labels"]["raw_postgres"] = "asyncpg (raw)"
            await attempt(
                results,
                "raw_postgres",
                lambda: _raw.postgres(sizes.single, sizes.batch_total, sizes.drain, sizes.latency),
                only=["raw_postgres"],
            )
        if needs_mysql:
            log("raw aiomysql")
            meta["labels"]["raw_mysql"] = "aiomysql (raw)"
            await attempt(
                results,
                "raw_mysql",
                lambda: _raw.mysql(sizes.single, sizes.batch_total, sizes.drain, sizes.latency),
                only=["raw_mysql"],
            )
    meta["duration_s"] = round(time.perf_counter() - clock, 1)
    meta["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report: dict[str, Any] = {"meta": meta, "results": results}
    report["targets"] = _report.targets(results)
    return report


def write(report: dict[str, Any], out: Path, name: str) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "md": out / f"{name}.md", "png": out / f"{name}.png"}
    paths["json"].write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    paths["md"].write_text(_report.markdown(report))
    _report.chart(report, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = anyio.run(main_async, args)
    paths = write(report, args.out, args.name)
    log(
        f"done in {report['meta']['duration_s']:.0f} s; wrote {', '.join(map(str, paths.values()))}"
    )
    print(paths["md"].read_text())


if __name__ == "__main__":
    main()
