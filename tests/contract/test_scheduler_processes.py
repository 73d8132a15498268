"""Three processes run the scheduler on one database: each occurrence fires exactly once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from asyncjobs import BackgroundJobs
from tests.processes import stop_worker, workers

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
Factory = Callable[..., BackgroundJobs]


async def test_every_second_task_fires_once_per_second_across_three_processes(
    make_jobs: Factory, dsn: str, tmp_path: Path
) -> None:
    log_file = tmp_path / "ticks.log"
    async with make_jobs(execute=False):
        pass  # migrate once before three processes start
    with workers(dsn, 3, "--tick-log", str(log_file), "--poll-ms", "50") as procs:
        await anyio.sleep(10)
        for proc in procs:
            await anyio.to_thread.run_sync(stop_worker, proc)
    job_ids = [
        int(line.split()[4])
        for line in log_file.read_text().splitlines()
        if line.startswith("start tick")
    ]
    async with make_jobs(execute=False) as reader:
        fire_times = []
        for job_id in job_ids:
            result = await reader.get_job(job_id)
            assert result is not None and result.job is not None and result.job.meta
            fire_times.append(datetime.fromisoformat(result.job.meta["fire_time"]))
    assert len(job_ids) == len(set(job_ids))  # no job ran twice
    counts = Counter(fire_times)
    assert max(counts.values()) == 1, [t for t, n in counts.items() if n > 1]
    ordered = sorted(counts)
    assert len(ordered) >= 7  # ~10 s of ticks (start-up takes a moment)
    gaps = [b - a for a, b in pairwise(ordered)]
    assert set(gaps) == {timedelta(seconds=1)}  # every second, none missed
