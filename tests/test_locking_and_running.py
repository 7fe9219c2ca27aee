"""The lock, signals, failures and table-lock retries, against a real PostgreSQL."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from conftest import (
    LOCK_KEY,
    PROJECTS,
    Database,
    finish,
    run_migrator,
    start_migrator,
    wait_for_line,
)

# The core: each test on psycopg 3 and on psycopg2.
pytestmark = pytest.mark.both_drivers

# Slow test revisions (SAMPLE_SLEEP) test running and locking: not measured first on a
# scratch database as well (MIGRATOR_SAFETY, tests/test_safety.py).
AUDITED = {"MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini"), "MIGRATOR_SAFETY": "off"}


@contextmanager
def session(database: Database, name: str) -> Iterator[sa.Connection]:
    """Another client of the database, as an application or an operator would be."""
    engine = database.engine(connect_args={"application_name": name})
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


@contextmanager
def holding_the_lock(database: Database) -> Iterator[sa.Connection]:
    """Another deploy's session, holding the migration lock."""
    with session(database, "deploy-holder") as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        holder.commit()
        yield holder


def applied_counts(database: Database) -> dict[str, int]:
    rows = database.query("SELECT revision, count(*) FROM applied GROUP BY revision")
    return {row[0]: int(row[1]) for row in rows}


def ledger_rows(database: Database) -> list[tuple[str, str]]:
    """The deploy ledger's rows, oldest first: (revision, outcome)."""
    rows = database.query("SELECT revision, outcome FROM migrator_ledger ORDER BY id")
    return [(row[0], row[1]) for row in rows]


def test_eight_concurrent_upgrades_apply_each_revision_once(database: Database) -> None:
    env = {**database.env, **AUDITED, "SAMPLE_SLEEP": "2"}
    started = time.monotonic()
    processes = [start_migrator("upgrade", "head", env=env) for _ in range(8)]
    results = [finish(process, started) for process in processes]

    assert [result.status for result in results] == [0] * 8, [r.stderr for r in results]
    assert applied_counts(database) == {"a1a1a1a1a1a1": 1, "a2a2a2a2a2a2": 1, "a3a3a3a3a3a3": 1}
    assert database.revision() == "a3a3a3a3a3a3"
    assert sum("applied=3" in result.stderr for result in results) == 1
    assert database.advisory_locks() == 0
    # The ledger agrees: one row each, written by the one run that applied them.
    assert ledger_rows(database) == [
        ("a1a1a1a1a1a1", "applied"),
        ("a2a2a2a2a2a2", "applied"),
        ("a3a3a3a3a3a3", "applied"),
    ]


def test_nothing_to_do_never_waits_on_the_lock(database: Database) -> None:
    run_migrator("upgrade", "head", env={**database.env, **AUDITED})
    with holding_the_lock(database):
        result = run_migrator(
            "upgrade", "head", env={**database.env, **AUDITED, "MIGRATOR_LOCK_TIMEOUT": "5"}
        )

    assert result.status == 0, result.output
    assert "nothing to do" in result.stderr
    assert "migration lock" not in result.stderr
    assert result.seconds < 5


def test_lock_timeout_exits_4_naming_the_holder(database: Database) -> None:
    with holding_the_lock(database):
        result = run_migrator(
            "upgrade", "head", env={**database.env, **AUDITED, "MIGRATOR_LOCK_TIMEOUT": "1.5"}
        )

    assert result.status == 4, result.output
    assert "migration lock not taken within 1.5 s (MIGRATOR_LOCK_TIMEOUT); held by pid" in (
        result.stderr
    )
    assert "(deploy-holder, " in result.stderr
    assert "status=lock timeout" in result.stderr
    assert database.tables() == set()


def test_waiting_for_the_lock_names_the_holder_and_then_runs(database: Database) -> None:
    with holding_the_lock(database) as holder:
        threading.Timer(2.5, holder.close).start()
        result = run_migrator("upgrade", "head", env={**database.env, **AUDITED})

    assert result.status == 0, result.output
    waits = [
        line for line in result.stderr.splitlines() if "waiting for the migration lock" in line
    ]
    assert len(waits) == 1  # every few seconds, not once a poll
    assert "held by pid" in waits[0] and "deploy-holder" in waits[0]
    assert database.revision() == "a3a3a3a3a3a3"


def interrupt_slow_revision(database: Database, sig: signal.Signals) -> tuple[int, str]:
    process = start_migrator(
        "upgrade", "head", env={**database.env, **AUDITED, "SAMPLE_SLEEP": "60"}
    )
    wait_for_line(process, "[1/3] a1a1a1a1a1a1")
    time.sleep(0.5)  # revision a2 is now inside pg_sleep
    sent = time.monotonic()
    process.send_signal(sig)
    result = finish(process, sent, timeout=30)
    assert result.seconds < 5, "the signal did not stop the run promptly"
    return result.status, result.stderr


def test_sigterm_rolls_back_the_revision_in_flight(database: Database) -> None:
    status, stderr = interrupt_slow_revision(database, signal.SIGTERM)

    assert status == 143, stderr
    assert "interrupted by SIGTERM; [2/3] a2a2a2a2a2a2 (slow revision) rolled back" in stderr
    assert "status=interrupted" in stderr
    assert database.revision() == "a1a1a1a1a1a1"
    assert "slow_done" not in database.tables()
    assert database.advisory_locks() == 0
    assert ledger_rows(database) == [("a1a1a1a1a1a1", "applied"), ("a2a2a2a2a2a2", "interrupted")]
    rerun = run_migrator("upgrade", "head", env={**database.env, **AUDITED})
    assert rerun.status == 0
    assert applied_counts(database) == {"a1a1a1a1a1a1": 1, "a2a2a2a2a2a2": 1, "a3a3a3a3a3a3": 1}
    assert ledger_rows(database)[2:] == [("a2a2a2a2a2a2", "applied"), ("a3a3a3a3a3a3", "applied")]


def test_sigint_exits_130(database: Database) -> None:
    status, stderr = interrupt_slow_revision(database, signal.SIGINT)

    assert status == 130, stderr
    assert "interrupted by SIGINT" in stderr
    assert database.revision() == "a1a1a1a1a1a1"


def test_sigterm_while_waiting_for_the_database_exits_143_at_once() -> None:
    process = start_migrator(
        "wait", env={"DB_HOST": "127.0.0.1", "DB_PORT": "9", "DB_NAME": "app", "DB_USER": "app"}
    )
    wait_for_line(process, "waiting for the database")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    result = finish(process, sent)

    assert result.status == 143
    assert result.seconds < 2


def test_failed_revision_rolls_back_and_a_rerun_resumes(database: Database) -> None:
    failed = run_migrator("upgrade", "head", env={**database.env, **AUDITED, "SAMPLE_FAIL": "1"})
    at_failure = database.revision()
    tables_at_failure = database.tables()
    rerun = run_migrator("upgrade", "head", env={**database.env, **AUDITED})

    assert failed.status == 1, failed.output
    assert "[3/3] a3a3a3a3a3a3 (maybe failing) failed and was rolled back" in failed.stderr
    assert 'relation "no_such_table" does not exist' in failed.stderr
    assert "Traceback" not in failed.output
    assert "status=failed" in failed.stderr
    assert at_failure == "a2a2a2a2a2a2"
    assert "third" not in tables_at_failure
    assert rerun.status == 0
    assert "[1/1] a3a3a3a3a3a3" in rerun.stderr


def test_debug_shows_a_traceback_still_masked(database: Database) -> None:
    result = run_migrator(
        "upgrade", "head", "--debug", env={**database.env, **AUDITED, "SAMPLE_FAIL": "1"}
    )

    assert result.status == 1
    assert "Traceback" in result.stderr  # and conftest checked the password is not there


def test_statement_timeout_applies_to_migrations(database: Database) -> None:
    env = {**database.env, **AUDITED, "SAMPLE_SLEEP": "5", "MIGRATOR_STATEMENT_TIMEOUT": "0.5"}

    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 1
    assert "canceling statement due to statement timeout" in result.stderr
    assert "MIGRATOR_STATEMENT_TIMEOUT (statement_timeout) ends a statement" in result.stderr
    assert database.revision() == "a1a1a1a1a1a1"


def test_table_lock_timeout_is_retried_until_the_blocker_commits(database: Database) -> None:
    run_migrator("upgrade", "8d2c5a61e0f4", env=database.env)
    env = {**database.env, "MIGRATOR_DDL_LOCK_TIMEOUT": "0.3", "MIGRATOR_DDL_LOCK_RETRIES": "20"}
    env["MIGRATOR_SAFETY"] = "off"  # the blocker's timer starts now: no scratch run first
    with session(database, "app-blocker") as blocker:
        blocker.execute(sa.text("UPDATE cars SET colour = colour"))  # holds ROW EXCLUSIVE
        threading.Timer(2.5, blocker.commit).start()
        result = run_migrator("upgrade", "head", env=env)

    assert result.status == 0, result.output
    assert "timed out waiting for a table lock" in result.stderr
    assert "[1/1] c3f9b7d21a58 (add services)" in result.stderr
    assert "(app-blocker, " in result.stderr and "on table cars" in result.stderr
    assert database.revision() == "c3f9b7d21a58"


def test_table_lock_retries_exhausted_fail_naming_the_blocker(database: Database) -> None:
    run_migrator("upgrade", "8d2c5a61e0f4", env=database.env)
    env = {**database.env, "MIGRATOR_DDL_LOCK_TIMEOUT": "0.2", "MIGRATOR_DDL_LOCK_RETRIES": "1"}
    # A session with a temporary table of its own (schema pg_temp_N, the system's) blocks
    # nothing of the project's: it is not named, though its transaction is the oldest.
    with (
        session(database, "app-temporary") as temporary,
        session(database, "app-blocker") as blocker,
    ):
        temporary.execute(sa.text("CREATE TEMPORARY TABLE scratch (n int)"))
        blocker.execute(sa.text("UPDATE cars SET colour = colour"))
        result = run_migrator("upgrade", "head", env=env)
        blocker.rollback()
        temporary.rollback()

    assert result.status == 1, result.output
    assert "could not take its table lock after 2 tries; rolled back" in result.stderr
    assert "MIGRATOR_DDL_LOCK_TIMEOUT and MIGRATOR_DDL_LOCK_RETRIES say how long" in result.stderr
    assert "app-blocker" in result.stderr
    assert "app-temporary" not in result.stderr
    assert database.revision() == "8d2c5a61e0f4"
    assert "services" not in database.tables()


def test_unknown_revision_in_the_database(database: Database) -> None:
    run_migrator("upgrade", "head", env=database.env)
    database.query("UPDATE alembic_version SET version_num = 'ffffffffffff'")

    refused = run_migrator("upgrade", "head", env=database.env)
    allowed = run_migrator(
        "upgrade", "head", env={**database.env, "MIGRATOR_ALLOW_UNKNOWN_REVISION": "true"}
    )
    current = run_migrator("current", env=database.env)

    assert refused.status == 2
    assert "the database is at ffffffffffff, a revision this project does not know" in (
        refused.stderr
    )
    assert allowed.status == 0
    assert "MIGRATOR_ALLOW_UNKNOWN_REVISION is true: nothing to do" in allowed.stderr
    assert current.status == 0
    assert current.stdout.startswith("ffffffffffff (unknown to this project")
    assert database.revision() == "ffffffffffff"


def test_a_killed_run_leaves_no_lock_behind(database: Database) -> None:
    """SIGKILL gives no chance to clean up: the lock goes with the connection."""
    process = start_migrator(
        "upgrade", "head", env={**database.env, **AUDITED, "SAMPLE_SLEEP": "3"}
    )
    wait_for_line(process, "[1/3] a1a1a1a1a1a1")
    process.kill()
    process.wait()

    # The killed run's server session ends, and its lock with it, as soon as it sees its
    # client gone: at once when idle, or when a statement it is running (the next
    # revision's 3 s sleep, on a slow machine) ends. Nobody has to release it.
    rerun = run_migrator(
        "upgrade", "head", env={**database.env, **AUDITED, "MIGRATOR_LOCK_TIMEOUT": "10"}
    )

    assert rerun.status == 0, rerun.output
    assert database.advisory_locks() == 0
    assert applied_counts(database) == {"a1a1a1a1a1a1": 1, "a2a2a2a2a2a2": 1, "a3a3a3a3a3a3": 1}
