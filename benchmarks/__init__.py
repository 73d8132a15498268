"""Benchmarks of asyncjobs on SQLite, PostgreSQL and MariaDB against pgqueuer and procrastinate.

Run everything with ``python -m benchmarks`` (``make bench``), or a CI-sized run with
``python -m benchmarks --quick`` (``make bench-quick``). See ``__main__.py``.
"""
