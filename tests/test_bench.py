"""The README's benchmark command runs end to end on tiny chains: a smoke test, not a timing.

The figures themselves are never asserted; bench/RESULTS.md holds a full run's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from typing import IO

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow  # about 95 s: the second stage of scripts/test.sh


def _relay(stream: IO[str], lines: list[str], prefix: str) -> None:
    """Collect the stream's lines and show each on the terminal as it comes (the bench is
    silent for minutes otherwise)."""
    for line in stream:
        lines.append(line)
        sys.__stderr__.write(f"{prefix}{line}")
        sys.__stderr__.flush()


def test_the_bench_runs_every_part_on_a_tiny_chain(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    report = tmp_path / "RESULTS.md"
    arguments = [
        "--sizes", "6,12", "--runs", "1", "--readiness-runs", "1", "--concurrency", "2",
        "--down-seconds", "0.5", "--hold-seconds", "1.5", "--condition-runs", "1",
        "--output", str(report),
    ]  # fmt: skip

    stdout: list[str] = []
    stderr: list[str] = []
    with capsys.disabled():  # its lines on the terminal as they come, and collected
        sys.__stderr__.write("\n")
        with subprocess.Popen(
            ["scripts/bench.sh", *arguments],
            cwd=ROOT,
            # Part 11's fleets, shrunk (the issue's figures are for 200 databases, 1,000 schemas).
            env={**os.environ, "BENCH_FLEET_DATABASES": "2", "BENCH_FLEET_SCHEMAS": "3"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as process:
            assert process.stdout is not None and process.stderr is not None
            relays = [
                threading.Thread(target=_relay, args=(process.stdout, stdout, "  bench| ")),
                threading.Thread(target=_relay, args=(process.stderr, stderr, "  bench! ")),
            ]
            for relay in relays:
                relay.start()
            try:
                process.wait(timeout=600)
            finally:
                process.kill()
                for relay in relays:
                    relay.join()
    result = subprocess.CompletedProcess(
        process.args, process.returncode, "".join(stdout), "".join(stderr)
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    text = report.read_text()
    assert text == result.stdout
    headings = re.findall(r"^## (\d+)\.", text, flags=re.MULTILINE)
    assert headings == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"]
    for row in (
        "| migrator upgrade head |",  # the no-op
        "| 12 | migrator upgrade head |",
        "| 12 | alembic upgrade head |",
        "| 12 | dbmate migrate (Go binary) |",
        "| dbmate --wait --wait-interval 100ms |",
        "| 2 x migrator upgrade head |",
        "delta",
        "| lost lock to exit 7 (one session) |",
        "| SIGTERM to exit 143, network stalled |",
        "| 30 runs at once, max_connections=40 (wall) |",
        "| upgrade, nothing to do | 2 |",
        "| connections per second |",  # 30 runs waiting for the lock
        "| migrator verify |",
        "| MIGRATOR_SAFETY=warn (the default), weighed from the manifest |",
        "| 2 fresh databases: `migrator fleet upgrade head` |",
        "| 2 fresh databases: the shell loop |",
        "| of which the loop's safety measurements (its log) |",
        "| 2 databases at head: `migrator fleet upgrade head` |",
        "| 3 fresh schemas (`schema=NAME`, one database): `migrator fleet upgrade head` |",
        "largest single process",
    ):
        assert row in text, row
    # Both traffic cases finished their revision once the blocker committed.
    traffic = text.split("## 7.")[1]
    exits = re.findall(r"\| (\d+) \|$", traffic.split("## 8.")[0], flags=re.MULTILINE)
    assert exits == ["0", "0"], traffic
