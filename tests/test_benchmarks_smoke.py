"""The benchmark harness runs end to end: the quick mode on SQLite only, with tiny sizes.
It proves the harness works and writes its results; it never asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "enqueue_single", "enqueue_many", "drain_1_worker", "drain_2_workers", "drain_backlog",
    "serial_drain", "latency_same_process", "latency_cross_process",
}  # fmt: skip


@pytest.mark.dialects("mysql")
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_mariadb_drain_is_divided_by_a_raw_loop_run_beside_it(
    dialect_name: str, tmp_path: Path
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "mysql", "--scale", "0.05",
         "--workloads", "drain_1_worker", "--out", str(tmp_path), "--name", "smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    drain = report["results"]["mysql"]["drain_1_worker"]
    assert drain["rate"] > 0 and drain["raw_claim_finish_100"] > 0
    (target,) = [t for t in report["targets"] if t["target"].startswith("MariaDB drain")]
    assert target["target"].endswith("(run beside it)")
    assert target["compared_with"] == drain["raw_claim_finish_100"]


@pytest.mark.sqlite
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_mode_on_sqlite_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "sqlite", "--scale", "0.02",
         "--out", str(tmp_path), "--name", "smoke"],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "smoke.json").read_text())
    assert set(report) == {"meta", "results", "targets"}
    assert report["meta"]["mode"] == "quick"
    assert {"machine", "versions", "sizes", "started", "duration_s"} <= set(report["meta"])
    sqlite = report["results"]["sqlite"]
    assert set(sqlite) == WORKLOADS
    for name, entry in sqlite.items():
        assert "error" not in entry, (name, entry)
    for name in WORKLOADS - {"latency_same_process", "latency_cross_process"}:
        assert {"jobs", "seconds", "rate"} <= set(sqlite[name]), name
    for name in ("latency_same_process", "latency_cross_process"):
        assert {"samples", "p50_ms", "p95_ms", "p99_ms"} <= set(sqlite[name]), name
    assert sqlite["drain_backlog"]["all_archived"] is True
    assert "rss_peak_mb" in sqlite["drain_backlog"]
    # CPU is metered (in clock ticks: a drain this small may read zero, but not every one).
    cpu = [
        sqlite[name][key]
        for name in ("drain_1_worker", "drain_backlog")
        for key in ("worker_cpu_us_per_job", "database_cpu_us_per_job")
        if key in sqlite[name]
    ]
    assert all(isinstance(value, int | float) and value >= 0 for value in cpu)
    assert sum(cpu) > 0
    assert all({"target", "ours", "ratio", "met"} <= set(t) for t in report["targets"])
    table = (tmp_path / "smoke.md").read_text()
    assert "| Workload |" in table
    assert "/ in the worker |" in table  # the CPU row, SQLite's cell
    assert (tmp_path / "smoke.png").read_bytes().startswith(b"\x89PNG")


def test_profile_summary_splits_waiting_from_work_per_thread() -> None:
    from benchmarks._profile import summarise

    main = "thread (1): MainThread;run (anyio/_core/_eventloop.py:83)"
    claim = f"{main};Store.claim (asyncjobs/store.py:379)"
    collapsed = "\n".join(
        [
            f"{main};EpollSelector.select (selectors.py:468) 6",
            f"{claim};row_to_job (asyncjobs/store.py:170) 3",
            f"{claim};Connection.fetch (asyncpg/connection.py:717) 1",
            "thread (2): AnyIO worker thread;Condition.wait (threading.py:327) 10",
            "not a sample line",
        ]
    )
    text = summarise(collapsed, "postgres-drain")
    assert text.startswith("# postgres-drain\n")
    assert "20 samples" in text
    assert "| MainThread | 10 | 60% |" in text
    assert "| AnyIO worker thread | 10 | 100% |" in text
    busy, inclusive = text.split("Busy samples")[1].split("The runtime's")
    assert busy.index("row_to_job") < busy.index("Connection.fetch")  # most samples first
    assert "| 15.0% | `row_to_job (asyncjobs/store.py:170)` |" in busy
    assert "EpollSelector" not in busy and "Condition.wait" not in busy
    assert "| 20.0% | `Store.claim (asyncjobs/store.py)` |" in inclusive  # 3 + 1 under it
    assert summarise("", "empty").endswith("No samples.\n")


def test_subjects_take_turns_run_by_run_and_keep_their_best() -> None:
    """Ratios divide figures taken close together: within a workload the subjects alternate
    run by run; each keeps its best run, and a failing subject is not run again."""
    from benchmarks.__main__ import run_all

    calls: list[str] = []

    def work(name: str, rates: list[float]) -> Any:
        async def run() -> dict[str, Any]:
            calls.append(name)
            rate = rates.pop(0)
            if rate < 0:
                raise RuntimeError("broken")
            return {"rate": rate, "jobs": 10}

        return run

    enqueue, drain = "enqueue_single", "drain_1_worker"
    plans = {
        "a": [(enqueue, work("a1", [1.0, 3.0]), 2), (drain, work("a2", [5.0]), 1)],
        "b": [(enqueue, work("b1", [2.0, 1.0]), 2), (drain, work("b2", [-1.0]), 1)],
        "c": [(enqueue, work("c1", [-1.0, 9.0]), 2)],
    }
    results = anyio.run(run_all, plans)
    assert calls == ["a1", "b1", "c1", "a1", "b1", "a2", "b2"]
    assert results["a"]["enqueue_single"] == {"rate": 3.0, "jobs": 10, "runs": [1.0, 3.0]}
    assert results["b"]["enqueue_single"]["rate"] == 2.0
    assert "broken" in results["c"]["enqueue_single"]["error"]
    assert results["a"]["drain_1_worker"]["rate"] == 5.0
    assert "error" in results["b"]["drain_1_worker"]
