"""The fast tier: `cli.main` called in the test's own process, against a real PostgreSQL, as
a test (or a program embedding the migrator) calls it: twice in one process, each run with
its own stop, its stdout and working directory put back after it (`pytest -m fast`)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PASSWORD_FORMS, PROJECTS, Database

from migrator import cli, signals

pytestmark = pytest.mark.fast

AUDITED = str(PROJECTS / "audited" / "alembic.ini")
AUDITED_HEAD = "a3a3a3a3a3a3"


@pytest.fixture
def env(database: Database, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The run's whole environment, handed to main(); the process's own names no database
    (a run that read os.environ instead would fail). SAMPLE_SLEEP: the audited project's
    revision a2 reads it from the process's environment, as a revision does."""
    for name in list(os.environ):
        if name.startswith(("DB_", "DATABASE_URL", "MIGRATOR_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SAMPLE_SLEEP", "0")
    return {**database.env, "MIGRATOR_CONFIG": AUDITED, "MIGRATOR_TERMINATION_LOG": "/nowhere"}


@pytest.fixture
def signals_put_back() -> Iterator[None]:
    """The test process's own SIGTERM and SIGINT handlers, whatever a test installs."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_a_run_stopped_before_it_began_leaves_the_next_run_in_the_process_free(
    env: dict[str, str],
    database: Database,
    signals_put_back: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    signals.catch()  # as migrator/__main__ does first
    os.kill(os.getpid(), signal.SIGTERM)  # while the program loads

    assert cli.main(["upgrade", "head"], environ=env) == 143
    first = capsys.readouterr().err
    assert "interrupted by SIGTERM before the run began; nothing was done" in first
    assert "status=interrupted" in first
    assert database.revision() is None

    assert cli.main(["upgrade", "head"], environ=env) == 0
    second = capsys.readouterr().err
    assert "interrupted" not in second
    assert f"to={AUDITED_HEAD}" in second
    assert database.revision() == AUDITED_HEAD


def test_sigterm_stops_one_run_and_the_next_run_in_the_process_still_applies(
    env: dict[str, str],
    database: Database,
    signals_put_back: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SAMPLE_SLEEP", "60")

    def terminate_once_sleeping() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = database.query(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND query LIKE 'SELECT pg_sleep%'"
            )
            if rows[0][0]:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=terminate_once_sleeping, daemon=True)
    sender.start()
    started = time.monotonic()
    status = cli.main(["upgrade", "head"], environ=env)
    sender.join()

    assert status == 143
    assert time.monotonic() - started < 20  # stopped, not slept out
    first = capsys.readouterr().err
    assert "status=interrupted" in first
    assert database.revision() == "a1a1a1a1a1a1"  # a2 rolled back, its table gone
    assert "slow_done" not in database.tables()
    assert database.advisory_locks() == 0

    monkeypatch.setenv("SAMPLE_SLEEP", "0")
    assert cli.main(["upgrade", "head"], environ=env) == 0
    second = capsys.readouterr().err
    assert "interrupted" not in second
    assert f"from=a1a1a1a1a1a1 to={AUDITED_HEAD} applied=2" in second
    assert database.revision() == AUDITED_HEAD


def test_stdout_and_the_working_directory_are_put_back_after_each_run(
    env: dict[str, str],
    database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    stdout = sys.stdout
    assert cli.main(["upgrade", "head"], environ=env) == 0
    capsys.readouterr()

    for _ in range(2):
        assert cli.main(["current"], environ=env) == 0
        assert sys.stdout is stdout  # not a masked stream around a masked stream
        assert Path.cwd() == tmp_path
    out = capsys.readouterr().out
    # Each run printed its line once, through one mask.
    assert out == f"{AUDITED_HEAD} (head)\n" * 2
    assert not any(form in out for form in PASSWORD_FORMS)


def test_a_fleet_in_process_reads_the_environment_it_was_given(
    env: dict[str, str],
    database: Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    targets = tmp_path / "targets"
    targets.write_text(f"{database.name}\nschema=tenant_a\n", encoding="utf-8")
    database.query("CREATE SCHEMA tenant_a")
    fleet_env = {**env, "MIGRATOR_FLEET_FILE": str(targets)}

    assert cli.main(["fleet", "upgrade", "head"], environ=fleet_env) == 0

    captured = capsys.readouterr()
    assert "summary command=fleet-upgrade targets=2 ok=2 failed=0 skipped=0" in captured.err
    assert f"{database.name}: ok (base -> {AUDITED_HEAD}, 3 applied" in captured.out
    assert f"schema=tenant_a: ok (base -> {AUDITED_HEAD}, 3 applied" in captured.out
    assert database.revision() == AUDITED_HEAD
    rows = database.query("SELECT version_num FROM tenant_a.alembic_version")
    assert [row[0] for row in rows] == [AUDITED_HEAD]
