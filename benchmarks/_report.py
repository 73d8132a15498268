"""From the results of one run: the targets of issue #8, a Markdown table and a PNG chart."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

Results = Mapping[str, Mapping[str, Any]]

DASH = "\u2013"  # an en dash: no figure
TIMES = "\u00d7"  # the multiplication sign of ratios
SYSTEMS = ("sqlite", "postgres", "mysql", "pgqueuer", "procrastinate")
THROUGHPUTS = (
    ("enqueue_single", "enqueue, one call per job"),
    ("enqueue_many", "enqueue, batch API (500 per call)"),
    ("drain_1_worker", "drain {drain}, 1 worker process"),
    ("drain_2_workers", "drain {drain}, 2 worker processes"),
    ("drain_backlog", "drain with {backlog} queued, 1 worker process"),
    ("serial_drain", "strictly serial drain ({serial}, one named worker)"),
)
RAW = {
    "insert_single": "insert, one autocommitted INSERT per job",
    "commit_paced": "the same INSERT paced like the latency samples: round trip p50 / p95 / p99 ms",
    "insert_batch_executemany": "insert, 500 per call: executemany",
    "insert_batch_unnest": "insert, 500 per call: INSERT ... SELECT unnest($1)",
    "insert_batch_copy": "insert, 500 per call: COPY",
    "insert_batch_multirow": "insert, 500 per call: multi-row INSERT",
    "claim_finish_1": "claim + finish (delete), 1 job per round trip",
    "claim_finish_10": "claim + finish (delete), 10 jobs per round trip",
    "claim_finish_100": "claim + finish (delete), 100 jobs per round trip",
}
LATENCIES = (
    ("latency_same_process", "enqueue→start, same process"),
    ("latency_cross_process", "enqueue→start, another process"),
)


def _get(results: Results, system: str, workload: str, field: str) -> float | None:
    value = results.get(system, {}).get(workload, {})
    if not isinstance(value, Mapping):
        return None
    found = value.get(field)
    return float(found) if isinstance(found, int | float) else None


def _ratio(ours: float | None, peer: float | None) -> float | None:
    if ours is None or peer is None or peer == 0:
        return None
    return ours / peer


def targets(results: Results) -> list[dict[str, Any]]:
    """Every target of issue #8 with our figure, the figure it is compared with, the ratio and
    whether it is met. Missing figures give ``met: None``."""
    rows: list[dict[str, Any]] = []

    def add(
        name: str,
        ours: float | None,
        other: float | None,
        goal: str,
        check: Callable[[float], bool],
        *,
        value: float | None = None,
        unit: str = "jobs/s",
        extra: bool = True,
    ) -> None:
        compared = _ratio(ours, other) if value is None else value
        met = None if compared is None else bool(check(compared) and extra)
        rows.append(
            {
                "target": name, "ours": ours, "compared_with": other, "unit": unit,
                "ratio": None if compared is None else round(compared, 3), "goal": goal,
                "met": met,
            }
        )  # fmt: skip

    pg_drain = _get(results, "postgres", "drain_1_worker", "rate")
    archived = results.get("postgres", {}).get("drain_1_worker", {}).get("all_archived", False)
    pgq_drain = _get(results, "pgqueuer", "drain_1_worker", "rate")
    add("PostgreSQL drain, 1 worker process, every job archived, vs pgqueuer", pg_drain,
        pgq_drain, ">= 2x (stretch 3x)", lambda r: r >= 2, extra=bool(archived))  # fmt: skip
    add("strictly serial drain (PostgreSQL) vs pgqueuer serial",
        _get(results, "postgres", "serial_drain", "rate"),
        _get(results, "pgqueuer", "serial_drain", "rate"), ">= 4x", lambda r: r >= 4)  # fmt: skip
    add("PostgreSQL enqueue, one call per job, vs pgqueuer",
        _get(results, "postgres", "enqueue_single", "rate"),
        _get(results, "pgqueuer", "enqueue_single", "rate"), ">= 1x", lambda r: r >= 1)  # fmt: skip
    add("PostgreSQL enqueue_many vs pgqueuer batch enqueue",
        _get(results, "postgres", "enqueue_many", "rate"),
        _get(results, "pgqueuer", "enqueue_many", "rate"), ">= 1x", lambda r: r >= 1)  # fmt: skip
    for system in ("postgres", "sqlite", "mysql"):
        p50 = _get(results, system, "latency_same_process", "p50_ms")
        add(f"latency p50, same process ({system})", p50, 1.0, "<= 1 ms",
            lambda v: v <= 1.0, value=p50, unit="ms")  # fmt: skip
    cross = _get(results, "postgres", "latency_cross_process", "p50_ms")
    pgq_cross = _get(results, "pgqueuer", "latency_cross_process", "p50_ms")
    add("latency p50, another process (PostgreSQL) vs pgqueuer", cross, pgq_cross,
        "<= 1x", lambda r: r <= 1, unit="ms")  # fmt: skip
    p99 = _get(results, "postgres", "latency_cross_process", "p99_ms")
    add("latency p99, another process (PostgreSQL)", p99, 10.0, "<= 10 ms",
        lambda v: v <= 10.0, value=p99, unit="ms")  # fmt: skip
    # The raw loop run beside the drain if it was (see benchmarks.workloads), else the one of
    # the raw section at the end of the run.
    beside = _get(results, "mysql", "drain_1_worker", "raw_claim_finish_100")
    add("MariaDB drain vs raw claim+finish 100 per batch"
        + (" (run beside it)" if beside is not None else ""),
        _get(results, "mysql", "drain_1_worker", "rate"),
        beside if beside is not None else _get(results, "raw_mysql", "claim_finish_100", "rate"),
        ">= 0.33x", lambda r: r >= 1 / 3)  # fmt: skip
    add("SQLite drain vs PostgreSQL drain", _get(results, "sqlite", "drain_1_worker", "rate"),
        pg_drain, ">= 1x", lambda r: r >= 1)  # fmt: skip
    for system in ("sqlite", "postgres", "mysql"):
        add(f"drain rate with the large backlog vs the small one ({system})",
            _get(results, system, "drain_backlog", "rate"),
            _get(results, system, "drain_1_worker", "rate"), ">= 0.9x",
            lambda r: r >= 0.9)  # fmt: skip
    for system in ("sqlite", "postgres", "mysql"):
        rss = _get(results, system, "drain_backlog", "rss_peak_mb")
        add(f"worker RSS peak during the large drain ({system})", rss, 150.0, "< 150 MB",
            lambda v: v < 150, value=rss, unit="MB")  # fmt: skip
    return rows


def _fmt_rate(value: float | None) -> str:
    if value is None:
        return DASH
    if value >= 10000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def _fmt_ratio(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}{TIMES}"


def _cell(results: Results, system: str, workload: str) -> str:
    entry = results.get(system, {}).get(workload)
    if not isinstance(entry, Mapping):
        return DASH
    if "error" in entry:
        return "error"
    if "p50_ms" in entry:
        return f"{entry['p50_ms']:.1f} / {entry['p95_ms']:.1f} / {entry['p99_ms']:.1f}"
    text = _fmt_rate(entry.get("rate"))
    expected = results.get("_sizes", {}).get(workload)
    if expected and entry.get("jobs") and entry["jobs"] != expected:
        text += f" ({entry['jobs']:,} jobs)".replace(",", "\u202f")
    return text


def markdown(report: Mapping[str, Any]) -> str:
    meta, results = report["meta"], report["results"]
    sizes = meta["sizes"]
    labels = meta["labels"]
    systems = [s for s in SYSTEMS if s in results]
    expected = {
        "drain_1_worker": sizes["drain"], "drain_2_workers": sizes["drain"],
        "drain_backlog": sizes["backlog"], "serial_drain": sizes["serial"],
    }  # fmt: skip
    view: dict[str, Any] = {**results, "_sizes": expected}
    words = {k: f"{sizes[k]:,}".replace(",", "\u202f") for k in ("drain", "backlog", "serial")}
    peers = [p for p in ("pgqueuer", "procrastinate") if p in results]
    lines = [
        f"Run: `python -m benchmarks{' --quick' if meta['mode'] == 'quick' else ''}` "
        f"on {meta['started'][:16].replace('T', ' ')} UTC, {meta['duration_s']:.0f} s.",
        "",
        f"Machine: {machine_line(meta)}.",
        "",
        "Throughput in jobs/s (higher is better); latency p50 / p95 / p99 in ms (lower is "
        "better). Jobs are no-op async functions. The last columns divide asyncjobs on "
        "PostgreSQL by each peer in the same run (for latency: the peer's figure divided by "
        "ours, so above 1\u00d7 means we are faster).",
        "",
    ]
    header = ["Workload", *(labels.get(s, s) for s in systems)]
    header += [f"PostgreSQL vs {labels.get(p, p).split()[0]}" for p in peers]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for key, title in THROUGHPUTS:
        row = [title.format(**words)]
        row += [_cell(view, s, key) for s in systems]
        ours = _get(results, "postgres", key, "rate")
        row += [_fmt_ratio(_ratio(ours, _get(results, p, key, "rate"))) for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    backlog_row = ["backlog cost: rate at the large backlog ÷ rate at the small one"]
    for s in systems:
        backlog_row.append(
            _fmt_ratio(
                _ratio(_get(results, s, "drain_backlog", "rate"),
                       _get(results, s, "drain_1_worker", "rate"))
            )
        )  # fmt: skip
    lines.append("| " + " | ".join(backlog_row + ["" for _ in peers]) + " |")
    for key, title in LATENCIES:
        row = [title + " (p50 / p95 / p99 ms)"] + [_cell(results, s, key) for s in systems]
        ours = _get(results, "postgres", key, "p50_ms")
        row += [_fmt_ratio(_ratio(_get(results, p, key, "p50_ms"), ours)) for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    rss_row = ["worker RSS peak, large-backlog drain (MB)"]
    for s in systems:
        rss = _get(results, s, "drain_backlog", "rss_peak_mb")
        rss_row.append(DASH if rss is None else f"{rss:.0f}")
    lines.append("| " + " | ".join(rss_row + ["" for _ in peers]) + " |")
    cpu_row = [f"CPU per job, drain {words['drain']}, 1 worker process: worker / database (µs)"]
    cpu_row += [_cpu_cell(results, s) for s in systems]
    lines.append("| " + " | ".join(cpu_row + ["" for _ in peers]) + " |")
    notes = _notes(results, labels)
    if notes:
        lines += ["", *notes]
    raw = [(k, labels.get(k, k)) for k in ("raw_postgres", "raw_mysql") if k in results]
    if raw:
        lines += ["", "Raw driver limits on the same servers in the same run (jobs/s; the paced "
                  "INSERT in ms):", ""]  # fmt: skip
        present = {name for k, _ in raw for name in results[k] if name != "error"}
        names = [n for n in RAW if n in present] + sorted(present - set(RAW))
        lines.append("| Raw driver, bare table | " + " | ".join(label for _, label in raw) + " |")
        lines.append("|---|" + "---|" * len(raw))
        for name in names:
            cells = [_cell(results, k, name) for k, _ in raw]
            lines.append(f"| {RAW.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", "Targets of issue #8:", "",
              "| Target | ours | compared with | ratio / value | goal | met |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for row in report["targets"]:
        unit = row["unit"]
        ours = row["ours"]
        other = row["compared_with"]
        fmt = _fmt_rate if unit == "jobs/s" else (lambda v: DASH if v is None else f"{v:.2f}")
        met = {True: "yes", False: "**no**", None: DASH}[row["met"]]
        ratio = DASH if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(
            f"| {row['target']} | {fmt(ours)} | {fmt(other)} | {ratio} | {row['goal']} | {met} |"
        )
    floors = [
        f"{label} {_get(results, key, 'commit_paced', 'p50_ms'):.2f} ms"
        for key, label in (("raw_postgres", "PostgreSQL"), ("raw_mysql", "MariaDB"))
        if _get(results, key, "commit_paced", "p50_ms") is not None
    ]
    if floors:
        lines += ["", "An enqueue→start in the same process waits for one commit: on this "
                  "machine a bare autocommitted INSERT, paced like the samples, takes (p50) "
                  + " and ".join(floors) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _cpu_cell(results: Results, system: str) -> str:
    worker = _get(results, system, "drain_1_worker", "worker_cpu_us_per_job")
    database = _get(results, system, "drain_1_worker", "database_cpu_us_per_job")
    if worker is None or database is None:
        return DASH
    if system == "sqlite":  # the database runs inside the worker process
        return f"{worker:.0f} / in the worker"
    return f"{worker:.0f} / {database:.0f}"


def _notes(results: Results, labels: Mapping[str, str]) -> list[str]:
    notes = []
    procrastinate = results.get("procrastinate", {})
    if "drain_1_worker_c1" in procrastinate:
        notes.append(
            f"- procrastinate's one-process drain is shown at concurrency 16; at its default "
            f"concurrency 1 it drained "
            f"{_fmt_rate(_get(results, 'procrastinate', 'drain_1_worker_c1', 'rate'))} jobs/s."
        )
    slow = [
        labels.get(s, s)
        for s, workloads in results.items()
        if isinstance(workloads, Mapping)
        and any(
            isinstance(w, Mapping) and w.get("queued")
            for k, w in workloads.items()
            if k in ("drain_backlog", "serial_drain")
        )
    ]
    if slow:
        notes.append(
            f"- {', '.join(slow)}: a drain that would overrun its time budget is measured over "
            "the jobs finished within it (the number of jobs is shown)."
        )
    if any(
        _get(results, s, "drain_1_worker", "worker_cpu_us_per_job") is not None for s in SYSTEMS
    ):
        notes.append(
            "- CPU per job: user + system time of the worker process and of every database "
            "server process while the drain was timed, divided by the jobs drained. Everything "
            "shares the machine's cores, so a drain's rate is at most "
            f"cores {TIMES} 10⁶ ÷ (worker + database) jobs/s, less what the harness's polling "
            "takes; the larger share is what to make cheaper."
        )
    if "sqlite" in results:
        notes.append(
            f"- {labels.get('sqlite', 'sqlite')}: another process learns of new work by watching "
            "the file's data version (every 10 ms while work flows, up to 80 ms when quiet)."
        )
    if "mysql" in results:
        notes.append(
            f"- {labels.get('mysql', 'mysql')}: MySQL has no notifications; another process "
            "learns of new work by watching the newest job id (every 10 ms while work flows, "
            "up to 80 ms when quiet)."
        )
    errors = [
        f"- {labels.get(s, s)} {w}: {entry['error']}"
        for s, workloads in results.items()
        if isinstance(workloads, Mapping)
        for w, entry in workloads.items()
        if isinstance(entry, Mapping) and "error" in entry
    ]
    return notes + errors


def machine_line(meta: Mapping[str, Any]) -> str:
    m = meta["machine"]
    v = meta["versions"]
    parts = [
        f"{m['cpu']} ({m['cores']} cores, shared by database, workers and producer)",
        f"{m['memory_gb']} GB RAM",
        m["os"],
        f"Python {m['python']}",
    ]
    if "postgres" in v:
        parts.append(
            f"PostgreSQL {v['postgres']} on loopback (fsync {v.get('postgres.fsync')}, "
            f"synchronous_commit {v.get('postgres.synchronous_commit')})"
        )
    if "mysql" in v:
        parts.append(
            f"MariaDB {v['mysql'].split('-')[0]} on loopback "
            f"(innodb_flush_log_at_trx_commit={v.get('mysql.innodb_flush_log_at_trx_commit')})"
        )
    parts.append(f"SQLite {v['sqlite']} (WAL, synchronous=NORMAL)")
    return "; ".join(parts)


def chart(report: Mapping[str, Any], path: Path) -> None:
    """Throughputs (log scale) and latencies, one bar per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, labels = report["results"], report["meta"]["labels"]
    systems = [s for s in SYSTEMS if s in results]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 9))
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        values = [_get(results, system, key, "rate") or 0 for key, _ in THROUGHPUTS]
        xs = [x + i * width for x in range(len(THROUGHPUTS))]
        top.bar(xs, values, width, label=labels.get(system, system))
    top.set_yscale("log")
    top.set_ylabel("jobs/s (log)")
    top.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(THROUGHPUTS))])
    top.set_xticklabels(
        ["enqueue\n1 per call", "enqueue\nbatch", "drain\n1 process", "drain\n2 processes",
         "drain\nlarge backlog", "serial\ndrain"]
    )  # fmt: skip
    top.legend(fontsize=8)
    top.set_title("Throughput (higher is better)")
    groups = [(k, f) for k, _ in LATENCIES for f in ("p50_ms", "p99_ms")]
    for i, system in enumerate(systems):
        values = [_get(results, system, k, f) or 0 for k, f in groups]
        xs = [x + i * width for x in range(len(groups))]
        bottom.bar(xs, values, width, label=labels.get(system, system))
    bottom.set_yscale("log")
    bottom.set_ylabel("ms (log)")
    bottom.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(groups))])
    bottom.set_xticklabels(
        ["same process\np50", "same process\np99", "other process\np50", "other process\np99"]
    )
    bottom.set_title("Enqueue → start latency (lower is better)")
    fig.suptitle(f"asyncjobs benchmarks ({report['meta']['mode']} run) — {machine_short(report)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def machine_short(report: Mapping[str, Any]) -> str:
    m = report["meta"]["machine"]
    return f"{m['cores']} cores, {m['memory_gb']} GB, {m['cpu']}"
