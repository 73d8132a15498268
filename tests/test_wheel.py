"""The built wheel ships the SQL files: installed in a fresh venv, it runs a job."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import anyio, asyncjobs, sys
from dataclasses import dataclass
from asyncjobs import AsyncCommandWithResult, BackgroundJobs

@dataclass
class Ping:
    n: int

class Pong(AsyncCommandWithResult[Ping, int]):
    async def run(self, request: Ping) -> int:
        return request.n + 1

async def main() -> None:
    async with BackgroundJobs(sys.argv[1], commands=[Pong]) as jobs:
        ref = await jobs.enqueue_command(Pong, Ping(41))
        result = await jobs.wait_for_job(ref.id)
        print(result.state, result.job.response_body, asyncjobs.__file__)

anyio.run(main)
"""


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_runs_a_job(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = dist.glob("asyncjobs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "asyncjobs/sql/sqlite/jobs.sql" in names
    assert "asyncjobs/py.typed" in names  # users' type checkers read the annotations
    assert "asyncjobs/sql/postgres/jobs.sql" in names and "asyncjobs/sql/mysql/jobs.sql" in names
    assert "asyncjobs/web/static/app.js" in names  # the admin UI ships too
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(wheel)], check=True,
        capture_output=True,
    )  # fmt: skip
    out = subprocess.run(
        [str(python), "-c", SCRIPT, f"sqlite:///{tmp_path / 'jobs.db'}"],
        cwd=tmp_path, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    state, body, location = out.split()
    assert (state, body) == ("Completed", "42")
    assert str(env_dir) in location  # the installed copy ran, not the checkout
