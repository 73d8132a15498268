"""The benchmark harness runs end to end: the quick mode on SQLite only, with tiny sizes.
It proves the harness works and writes its results; it never asserts a speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = {
    "enqueue_single", "enqueue_many", "drain_1_worker", "drain_2_workers", "drain_backlog",
    "serial_drain", "latency_same_process", "latency_cross_process",
}  # fmt: skip


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
    assert all({"target", "ours", "ratio", "met"} <= set(t) for t in report["targets"])
    assert "| Workload |" in (tmp_path / "smoke.md").read_text()
    assert (tmp_path / "smoke.png").read_bytes().startswith(b"\x89PNG")
