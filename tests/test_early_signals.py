"""SIGTERM and SIGINT from the first instruction: a signal while the program is still loading
(SQLAlchemy and Alembic take most of a second on a busy node) ends the run as a later one
does: exit 143 or 130, a summary line, the termination message, nothing done.

What is promised starts at the first line of `migrator/__main__.py`. Before it, the
interpreter starts (tens of milliseconds) and the signal's default applies: the process is
killed by it (143 from a shell, but no summary). The tests tell the two apart by what the
process itself says: with PYTHONPROFILEIMPORTTIME the interpreter writes a line on stderr
each time it has imported a module, so the stderr of a killed process shows how far it got.
Any module of ours but `migrator.signals` is imported after the handler is in place.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ROOT, Database, Result, finish, run_migrator, start_migrator

HEAD = "c3f9b7d21a58"  # the example project's head
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


@dataclass
class Run:
    result: Result
    termination_message: str


@pytest.fixture
def termination_log(tmp_path: Path) -> Path:
    path = tmp_path / "termination-log"
    path.touch()  # written only when it exists, as /dev/termination-log does in a pod
    return path


def imported(stderr: str) -> list[str]:
    return [match[1] for line in stderr.splitlines() if (match := IMPORT_LINE.match(line))]


def past_the_first_line(stderr: str) -> bool:
    """Whether the process had run the first line of migrator/__main__.py (its handler)."""
    return any(
        module.startswith("migrator.") and module != "migrator.signals"
        for module in imported(stderr)
    )


def log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


def start(database: Database, termination_log: Path, **env: str) -> subprocess.Popen[str]:
    return start_migrator(
        "upgrade",
        "head",
        env={
            **database.env,
            "MIGRATOR_TERMINATION_LOG": str(termination_log),
            "PYTHONPROFILEIMPORTTIME": "1",
            **env,
        },
    )


def read_until_imported(process: subprocess.Popen[str], module: str) -> str:
    """Read stderr until the interpreter says it imported `module`; what was read."""
    assert process.stderr is not None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if (match := IMPORT_LINE.match(line)) and match[1] == module:
            return "".join(lines)
    process.kill()
    raise AssertionError(f"{module} was never imported:\n{''.join(lines)[-3000:]}")


def finish_run(
    process: subprocess.Popen[str], termination_log: Path, already_read: str = ""
) -> Run:
    result = finish(process, time.monotonic(), timeout=60)
    result.stderr = already_read + result.stderr
    return Run(result, termination_log.read_text(encoding="utf-8"))


def assert_interrupted(run: Run, signal_number: int) -> None:
    """What an operator reads after a stop: the status, one summary line (also the
    termination message), no traceback, and no revision applied."""
    result = run.result
    lines = log_lines(result.stderr)
    assert result.status == 128 + signal_number, "\n".join(lines)[-3000:]
    assert "Traceback" not in result.stderr, "\n".join(lines)[-3000:]
    summaries = [line for line in lines if " summary command=upgrade " in line]
    assert len(summaries) == 1, "\n".join(lines)
    assert " applied=0 " in summaries[0]
    assert "status=interrupted" in summaries[0]
    assert run.termination_message.startswith("summary command=upgrade ")
    assert "status=interrupted" in run.termination_message
    assert f"interrupted by {signal.Signals(signal_number).name}" in result.stderr


@pytest.mark.parametrize("milliseconds", [0, 50, 150, 300])
def test_sigterm_at_a_moment_of_the_start(
    database: Database, termination_log: Path, milliseconds: int
) -> None:
    process = start(database, termination_log)
    time.sleep(milliseconds / 1000)
    process.send_signal(signal.SIGTERM)
    run = finish_run(process, termination_log)

    if run.result.status == -signal.SIGTERM:
        # Killed by the signal's default: only while the interpreter was still starting,
        # before the first line of ours, so with nothing said and nothing done.
        assert not past_the_first_line(run.result.stderr), run.result.stderr[-3000:]
        assert log_lines(run.result.stderr) == [] and run.result.stdout == ""
        assert run.termination_message == ""
    else:
        assert_interrupted(run, signal.SIGTERM)
    assert database.advisory_locks() == 0
    if "nothing was done" in run.result.stderr or run.result.status < 0:
        assert database.tables() == set()
    # Whatever the moment, the database is left as a rerun can take on.
    again = run_migrator("upgrade", "head", env=database.env)
    assert again.status == 0, again.output
    assert database.revision() == HEAD


@pytest.mark.parametrize(
    ("module", "signal_number"),
    [
        ("migrator.errors", signal.SIGTERM),  # the first of ours after the handler
        ("migrator.errors", signal.SIGINT),
        ("sqlalchemy", signal.SIGTERM),  # the heavy imports, before any connection
        ("alembic", signal.SIGTERM),
    ],
)
def test_a_signal_while_the_program_loads_ends_the_run_before_any_database_work(
    database: Database, termination_log: Path, module: str, signal_number: int
) -> None:
    process = start(database, termination_log)
    read = read_until_imported(process, module)
    process.send_signal(signal_number)
    run = finish_run(process, termination_log, read)

    assert_interrupted(run, signal_number)
    assert "before the run began; nothing was done" in run.result.stderr
    assert database.tables() == set()
    assert database.advisory_locks() == 0


@pytest.fixture
def project_at_head(database: Database, tmp_path: Path) -> Iterator[Path]:
    """The example project with its manifest (as an image build leaves it), and the
    database at its head: a deploy with nothing to do takes the fast path."""
    copy = tmp_path / "project"
    for part in ("alembic", "persistence"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    ini = copy / "alembic.ini"
    shutil.copy(ROOT / "alembic.ini", ini)
    for command in (("manifest",), ("upgrade", "head")):
        result = run_migrator(*command, env={**database.env, "MIGRATOR_CONFIG": str(ini)})
        assert result.status == 0, result.output
    yield ini


def test_sigterm_during_the_fast_path_is_reported_as_interrupted(
    database: Database, termination_log: Path, project_at_head: Path
) -> None:
    # The fast path's query waits behind a table lock, so that the signal lands in it.
    blocker = database.engine().connect()
    try:
        blocker.execute(sa.text("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE"))
        process = start(
            database,
            termination_log,
            MIGRATOR_CONFIG=str(project_at_head),
        )
        deadline = time.monotonic() + 60
        while not database.query(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'SELECT version_num FROM %'"
        ):
            assert time.monotonic() < deadline and process.poll() is None, "no fast path query"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
    finally:
        blocker.rollback()
        blocker.close()
    run = finish_run(process, termination_log)

    assert_interrupted(run, signal.SIGTERM)
    assert "nothing to do" not in run.result.stderr
    assert database.revision() == HEAD
