"""The lock and the connections under the conditions production has: a lock session that is
ended, a role that cannot see other roles' sessions, PgBouncer in front, a network that
stalls, few connection slots, a read-only server. Real servers throughout (tests/conditions.py).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from conditions import Bouncer, OtherRole, Proxy, SmallServer
from conftest import (
    LOCK_KEY,
    PROJECTS,
    ROLE,
    Database,
    Result,
    finish,
    run_migrator,
    start_migrator,
)
from conftest import wait_for_line as read_until
from test_locking_and_running import applied_counts, holding_the_lock, ledger_rows

# Stalls, outages and timeouts that take seconds each: the second stage of scripts/test.sh.
pytestmark = pytest.mark.slow

# Slow test revisions (SAMPLE_SLEEP) test running and locking: not measured first on a
# scratch database as well (MIGRATOR_SAFETY, tests/test_safety.py).
AUDITED = {"MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini"), "MIGRATOR_SAFETY": "off"}
OWN_CONNECTION = {
    "MIGRATOR_CONFIG": str(PROJECTS / "own_connection" / "alembic.ini"),
    "MIGRATOR_SAFETY": "off",
}
OUTSIDE = {
    "MIGRATOR_CONFIG": str(PROJECTS / "outside_transaction" / "alembic.ini"),
    "MIGRATOR_SAFETY": "off",
}
ALL_ONCE = {"a1a1a1a1a1a1": 1, "a2a2a2a2a2a2": 1, "a3a3a3a3a3a3": 1}


def lock_session_pid(database: Database) -> int:
    rows = database.query(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND objid = :low AND classid = :high",
        low=LOCK_KEY & 0xFFFFFFFF,
        high=LOCK_KEY >> 32,
    )
    assert len(rows) == 1, rows
    return int(rows[0][0])


def migrator_sessions(database: Database) -> list[int]:
    rows = database.query(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'migrator@%' "
        "AND datname = current_database()"
    )
    return [int(row[0]) for row in rows]


def run_together(count: int, env: dict[str, str]) -> list[Result]:
    """`count` runs started at once, as concurrent deploys would be."""
    started = time.monotonic()
    processes = [start_migrator("upgrade", "head", env=env) for _ in range(count)]
    return [finish(process, started, timeout=300) for process in processes]


def terminate(database: Database, pid: int) -> None:
    with database.server.admin.connect() as connection:
        connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


# -- a lost lock ----------------------------------------------------------------------------


def test_a_run_whose_lock_session_is_terminated_exits_7_and_the_next_applies_once(
    database: Database,
) -> None:
    env = {**database.env, **AUDITED, "SAMPLE_SLEEP": "30"}
    started = time.monotonic()
    first = start_migrator("upgrade", "head", env=env)
    read_until(first, "applied in")  # a1 done; a2 sleeps
    terminate(database, lock_session_pid(database))
    lost = finish(first, started)

    assert lost.status == 7, lost.output
    assert "migration lock was lost" in lost.stderr
    assert "status=lock lost" in lost.stderr
    assert "Traceback" not in lost.output
    # The revision in flight died with the session: no row for it, none to write it on.
    assert ledger_rows(database) == [("a1a1a1a1a1a1", "applied")]
    after = run_migrator("upgrade", "head", env={**env, "SAMPLE_SLEEP": "0"})
    assert after.status == 0, after.output
    assert applied_counts(database) == ALL_ONCE
    assert [row for row in ledger_rows(database) if row[1] == "applied"] == [
        (revision, "applied") for revision in sorted(ALL_ONCE)
    ]


def test_when_env_py_has_its_own_connection_a_heartbeat_notices_the_lost_lock(
    database: Database,
) -> None:
    env = {**database.env, **OWN_CONNECTION, "SAMPLE_SLEEP": "30"}
    started = time.monotonic()
    first = start_migrator("upgrade", "head", env=env)
    read_until(first, "applied in")
    lock_pid = lock_session_pid(database)
    assert len(migrator_sessions(database)) == 2  # the lock's session and env.py's own
    terminate(database, lock_pid)
    terminated_at = time.monotonic()
    lost = finish(first, started)

    assert lost.status == 7, lost.output
    assert "migration lock was lost" in lost.stderr
    assert time.monotonic() - terminated_at < 10  # the heartbeat beats every 2 s
    assert applied_counts(database) == {"a1a1a1a1a1a1": 1}  # a2 was rolled back
    assert "slow_done" not in database.tables()


def test_ending_env_pys_own_connection_is_an_outage_exit_3_and_frees_the_lock(
    database: Database,
) -> None:
    # Not 1: the revision did not fail on its own SQL; a pipeline retries an outage.
    env = {**database.env, **OWN_CONNECTION, "SAMPLE_SLEEP": "30"}
    started = time.monotonic()
    first = start_migrator("upgrade", "head", env=env)
    read_until(first, "applied in")
    lock_pid = lock_session_pid(database)
    (worker,) = [pid for pid in migrator_sessions(database) if pid != lock_pid]
    terminate(database, worker)
    failed = finish(first, started)

    assert failed.status == 3, failed.output
    assert "env.py's connection was lost during [2/3] a2a2a2a2a2a2" in failed.stderr
    assert "status=connection lost" in failed.stderr
    assert database.advisory_locks() == 0
    assert applied_counts(database) == {"a1a1a1a1a1a1": 1}


def test_the_roles_idle_session_timeout_does_not_end_the_lock_session(
    database: Database,
) -> None:
    with database.server.admin.connect() as connection:
        connection.execute(
            sa.text(
                f"ALTER ROLE {ROLE} IN DATABASE {database.name} SET idle_session_timeout = '1s'"
            )
        )
    for project in (AUDITED, OWN_CONNECTION):
        database.query("DROP TABLE IF EXISTS applied, slow_done, third, alembic_version")
        result = run_migrator(
            "upgrade", "head", env={**database.env, **project, "SAMPLE_SLEEP": "3"}
        )

        assert result.status == 0, result.output
        assert applied_counts(database) == ALL_ONCE


# -- a non-transactional revision -----------------------------------------------------------


def test_a_failed_revision_outside_a_transaction_names_what_it_left(database: Database) -> None:
    env = {**database.env, **OUTSIDE, "SAMPLE_DUPLICATES": "1"}
    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 1, result.output
    assert "outside a transaction, which are not rolled back" in result.stderr
    assert "INVALID index items_code on items" in result.stderr
    assert "DROP INDEX CONCURRENTLY items_code" in result.stderr
    assert "Traceback" not in result.output


def test_a_revision_outside_a_transaction_never_runs_on_after_its_lock_is_lost(
    database: Database,
) -> None:
    env = {**database.env, **OUTSIDE, "SAMPLE_SLEEP": "30"}
    started = time.monotonic()
    first = start_migrator("upgrade", "head", env=env)
    read_until(first, "applied in")  # o1 done; o2 sleeps outside a transaction
    terminate(database, lock_session_pid(database))
    lost = finish(first, started)
    again = run_migrator("upgrade", "head", env={**env, "SAMPLE_SLEEP": "0"})

    assert lost.status == 7, lost.output
    assert "outside a transaction" in lost.stderr
    assert again.status == 0, again.output
    steps = [row[0] for row in database.query("SELECT step FROM steps")]
    assert sorted(steps) == ["after", "before", "before"]  # the first run stopped for good


# -- another role ---------------------------------------------------------------------------


def test_a_lock_held_by_another_role_is_named_by_what_can_be_seen(
    database: Database, other_role: OtherRole
) -> None:
    engine = other_role.engine("other-deploy")
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
        holder.commit()
        pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        result = run_migrator(
            "upgrade", "head", env={**database.env, **AUDITED, "MIGRATOR_LOCK_TIMEOUT": "2"}
        )

    assert result.status == 4, result.output
    assert f"pid {pid} (a session of role {other_role.name}; its details are hidden" in (
        result.stderr
    )
    assert "unexpected" not in result.stderr


def test_a_table_locked_by_another_role_is_reported_without_crashing(
    database: Database, other_role: OtherRole
) -> None:
    run_migrator("upgrade", "a1a1a1a1a1a1", env={**database.env, **AUDITED})
    database.query(f"GRANT SELECT ON applied TO {other_role.name}")
    engine = other_role.engine("dba-psql")
    with engine.connect() as blocker:
        blocker.execute(sa.text("LOCK TABLE applied IN ACCESS SHARE MODE"))
        pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        result = run_migrator(
            "downgrade",
            "base",
            env={
                **database.env,
                **AUDITED,
                "MIGRATOR_DDL_LOCK_TIMEOUT": "0.3",
                "MIGRATOR_DDL_LOCK_RETRIES": "1",
            },
        )
        blocker.rollback()

    assert result.status == 1, result.output
    assert f"pid {pid} (a session of role {other_role.name}" in result.stderr
    assert "retry 1 of 1" in result.stderr
    assert "unexpected" not in result.stderr


# -- PgBouncer ------------------------------------------------------------------------------


def test_a_run_through_transaction_pooling_is_refused_at_once(
    database: Database, pgbouncer: Callable[..., Bouncer]
) -> None:
    bouncer = pgbouncer(database, mode="transaction", pool_size=5)
    result = run_migrator("upgrade", "head", env={**bouncer.env, **AUDITED})

    assert result.status == 2, result.output
    assert "transaction pooler" in result.stderr
    assert "point the migrator at PostgreSQL directly" in result.stderr
    assert database.tables() == set()
    assert database.advisory_locks() == 0


def test_transaction_pooling_is_refused_and_never_applies_twice(
    database: Database, pgbouncer: Callable[..., Bouncer]
) -> None:
    bouncer = pgbouncer(database, mode="transaction", pool_size=2)
    env = {**bouncer.env, **AUDITED, "SAMPLE_SLEEP": "2"}
    results = run_together(4, env)

    assert {result.status for result in results} <= {0, 2}, [r.stderr for r in results]
    refused = [result for result in results if result.status == 2]
    assert refused, "no run noticed the transaction pooler"
    assert all("transaction pooler" in result.stderr for result in refused)
    counts = applied_counts(database) if "applied" in database.tables() else {}
    assert all(count == 1 for count in counts.values()), counts
    assert database.advisory_locks() == 0


@pytest.mark.parametrize("project", [AUDITED, OWN_CONNECTION], ids=["shared", "own_connection"])
def test_ten_runs_through_a_session_pool_of_five_all_finish(
    database: Database, pgbouncer: Callable[..., Bouncer], project: dict[str, str]
) -> None:
    # The nine that wait hold no pooled connection: the one holding the lock gets the
    # second connection its env.py makes.
    bouncer = pgbouncer(database, mode="session", pool_size=5)
    env = {**bouncer.env, **project, "SAMPLE_SLEEP": "1"}
    results = run_together(10, env)

    assert [result.status for result in results] == [0] * 10, [r.stderr for r in results]
    assert applied_counts(database) == ALL_ONCE
    assert database.advisory_locks() == 0
    # The deploy ledger through the pool: one row each, as the version table says.
    assert ledger_rows(database) == [(revision, "applied") for revision in sorted(ALL_ONCE)]


def test_timeouts_hold_behind_a_pooler_that_ignores_startup_options(
    database: Database, pgbouncer: Callable[..., Bouncer]
) -> None:
    bouncer = pgbouncer(database, mode="session", ignore_options=True)
    env = {**bouncer.env, **AUDITED, "SAMPLE_SLEEP": "6", "MIGRATOR_STATEMENT_TIMEOUT": "1"}
    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 1, result.output
    assert "statement timeout" in result.stderr
    assert result.seconds < 6


def test_a_pooler_that_rejects_startup_options_is_a_configuration_error_at_once(
    database: Database, pgbouncer: Callable[..., Bouncer]
) -> None:
    bouncer = pgbouncer(database, mode="session", ignore_options=False)
    env = {**bouncer.env, **AUDITED, "MIGRATOR_DDL_LOCK_TIMEOUT": "5"}
    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 2, result.output
    assert "unsupported startup parameter" in result.stderr
    assert result.seconds < 5


# -- a stalled network ----------------------------------------------------------------------


def test_sigterm_ends_a_run_on_a_stalled_network_within_10_s(
    database: Database, stall_proxy: Callable[..., Proxy]
) -> None:
    proxy = stall_proxy(database)
    env = {**proxy.env, **AUDITED, "SAMPLE_SLEEP": "8", "MIGRATOR_NETWORK_TIMEOUT": "3"}
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env=env)
    read_until(run, "applied in")
    proxy.stall()
    run.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    result = finish(run, started, timeout=30)

    assert result.status == 143, result.output
    assert time.monotonic() - signalled < 10
    assert "the server rolls back" in result.stderr
    assert "when it drops the session" in result.stderr
    # The server ends the session itself, and the lock with it: here the proxy still answers
    # for the vanished client, so once the statement in flight ends the session idles, in its
    # transaction or between two, until its idle timeout (twice the network timeout).
    deadline = time.monotonic() + 40
    while database.advisory_locks() and time.monotonic() < deadline:
        time.sleep(1)
    assert database.advisory_locks() == 0
    assert "slow_done" not in database.tables()


def test_a_measurement_longer_than_the_idle_timeout_keeps_the_session(
    database: Database,
) -> None:
    # The safety measurement at deploy runs a2's 8 s sleep on a scratch database while the
    # run's session waits: longer than its idle_session_timeout (twice the network timeout).
    env = {
        **database.env,
        **AUDITED,
        "MIGRATOR_SAFETY": "warn",
        "MIGRATOR_SAFETY_MEASURE": "deploy",
        "SAMPLE_SLEEP": "8",
        "MIGRATOR_NETWORK_TIMEOUT": "3",
    }
    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 0, result.output
    assert "safety: 3 revision(s) measured" in result.stderr
    assert applied_counts(database) == ALL_ONCE


def test_a_vanished_clients_session_is_ended_between_transactions(
    database: Database, stall_proxy: Callable[..., Proxy]
) -> None:
    # While the safety measurement runs the run's session is idle outside a transaction;
    # the proxy still answers for the client after it is gone, so only the session's own
    # idle_session_timeout (twice the network timeout) can end it.
    proxy = stall_proxy(database)
    env = {
        **proxy.env,
        **AUDITED,
        "MIGRATOR_SAFETY": "warn",
        "MIGRATOR_SAFETY_MEASURE": "deploy",
        "SAMPLE_SLEEP": "8",
        "MIGRATOR_NETWORK_TIMEOUT": "3",
    }
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env=env)
    read_until(run, "scratch database")
    proxy.stall()
    run.send_signal(signal.SIGTERM)
    result = finish(run, started, timeout=30)
    assert result.status == 143, result.output

    # The run's session, idle while the measurement went on, is ended by the server.
    deadline = time.monotonic() + 20
    while migrator_sessions(database) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert migrator_sessions(database) == []
    assert database.advisory_locks() == 0
    assert "applied" not in database.tables()
    # The scratch database could not be dropped over the stalled network: later tests on
    # this server count scratch databases.
    proxy.resume()
    with database.server.admin.connect() as connection:
        names = connection.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'migrator_scratch_%'")
        ).scalars()
        for name in list(names):
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_a_stall_during_a_revision_ends_the_run_within_the_network_timeout(
    database: Database, stall_proxy: Callable[..., Proxy]
) -> None:
    proxy = stall_proxy(database)
    env = {**proxy.env, **AUDITED, "SAMPLE_SLEEP": "60", "MIGRATOR_NETWORK_TIMEOUT": "6"}
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env=env)
    read_until(run, "applied in")
    proxy.stall()
    stalled = time.monotonic()
    result = finish(run, started, timeout=60)

    assert result.status == 7, result.output
    assert time.monotonic() - stalled < 20
    assert "migration lock was lost" in result.stderr


def test_a_proxy_that_stops_forwarding_ends_the_run_by_the_statement_timeout(
    database: Database, stall_proxy: Callable[..., Proxy]
) -> None:
    # The proxy keeps every socket open and its kernel acknowledges every packet: keepalives
    # and tcp_user_timeout see nothing wrong. The server answers every statement within
    # MIGRATOR_STATEMENT_TIMEOUT; no answer by then plus MIGRATOR_NETWORK_TIMEOUT is a stall.
    proxy = stall_proxy(database)
    env = {
        **proxy.env,
        **AUDITED,
        "SAMPLE_SLEEP": "4",
        "MIGRATOR_STATEMENT_TIMEOUT": "5",
        "MIGRATOR_NETWORK_TIMEOUT": "3",
    }
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env=env)
    read_until(run, "applied in")
    proxy.wedge()
    wedged = time.monotonic()
    result = finish(run, started, timeout=60)

    assert result.status == 7, result.output
    assert "the database did not answer for" in result.stderr
    # 5 + 3 s to notice, then at most the stop grace (8 s) for a cancel that cannot arrive.
    assert time.monotonic() - wedged < 5 + 3 + 8 + 4
    # The first revision's COMMIT may be what the proxy held: then the server rolled it back.
    applied = applied_counts(database) if "applied" in database.tables() else {}
    assert applied in ({}, {"a1a1a1a1a1a1": 1}), applied


def test_a_proxy_that_stops_forwarding_is_noticed_by_the_heartbeat(
    database: Database, stall_proxy: Callable[..., Proxy]
) -> None:
    # With env.py's own connection the lock's session answers a heartbeat every 2 s: its
    # own statements are quick, so no answer within twice MIGRATOR_NETWORK_TIMEOUT (plus
    # 1 s; TCP would have noticed a dead link by then) is a stall, with no statement
    # timeout set.
    proxy = stall_proxy(database)
    env = {**proxy.env, **OWN_CONNECTION, "SAMPLE_SLEEP": "60", "MIGRATOR_NETWORK_TIMEOUT": "3"}
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env=env)
    read_until(run, "applied in")
    proxy.wedge()
    wedged = time.monotonic()
    result = finish(run, started, timeout=60)

    assert result.status == 7, result.output
    assert "the database did not answer for" in result.stderr
    assert time.monotonic() - wedged < 2 + (2 * 3 + 1) + 8 + 4


def test_the_lock_timeout_holds_when_the_lock_wait_stalls(
    database: Database, stall_proxy: Callable[..., Proxy]
) -> None:
    proxy = stall_proxy(database)
    env = {
        **proxy.env,
        **AUDITED,
        "MIGRATOR_LOCK_TIMEOUT": "3",
        "MIGRATOR_NETWORK_TIMEOUT": "120",
    }
    with holding_the_lock(database):
        started = time.monotonic()
        run = start_migrator("upgrade", "head", env=env)
        read_until(run, "waiting for the migration lock")
        waiting_since = time.monotonic()
        proxy.stall()
        result = finish(run, started, timeout=60)
        waited = time.monotonic() - waiting_since

    assert result.status == 4, result.output
    assert waited < 3 + 10  # the lock timeout, plus at most 10 s (README)


# -- connection slots, restarts, read-only servers ------------------------------------------


@pytest.mark.parametrize("project", [AUDITED, OWN_CONNECTION], ids=["shared", "own_connection"])
def test_thirty_runs_at_once_on_forty_connection_slots(
    small_server: SmallServer, project: dict[str, str]
) -> None:
    # With env.py's own connection, each run needs a second slot: that one waits too.
    env = {**small_server.env, **project, "SAMPLE_SLEEP": "1"}
    results = run_together(30, env)

    assert [result.status for result in results] == [0] * 30, [
        r.stderr for r in results if r.status
    ]
    assert applied_counts(small_server) == ALL_ONCE


def test_a_waiting_run_holds_no_session_between_looks(database: Database) -> None:
    with holding_the_lock(database) as holder:
        started = time.monotonic()
        run = start_migrator("upgrade", "head", env={**database.env, **AUDITED})
        read_until(run, "waiting for the migration lock")
        samples = []
        for _ in range(40):
            samples.append(len(migrator_sessions(database)))
            time.sleep(0.1)
        holder.execute(sa.text("SELECT pg_advisory_unlock_all()"))
        holder.commit()
        result = finish(run, started)

    assert result.status == 0, result.output
    # A look (connect, try the lock, read the revision, disconnect) takes a few ms; the
    # pauses between looks, hundreds.
    assert samples.count(0) >= 30, samples
    assert applied_counts(database) == ALL_ONCE


def test_a_server_restart_during_the_lock_wait_is_waited_out(small_server: SmallServer) -> None:
    holder = small_server.superuser_connection()
    holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env={**small_server.env, **AUDITED})
    read_until(run, "waiting for the migration lock")
    small_server.restart()  # the holder's session, and its lock, end with it
    result = finish(run, started)

    assert result.status == 0, result.output
    assert applied_counts(small_server) == ALL_ONCE


def test_a_server_restart_during_a_revision_is_exit_7_and_a_rerun_finishes(
    small_server: SmallServer,
) -> None:
    env = {**small_server.env, **AUDITED, "SAMPLE_SLEEP": "30"}
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env=env)
    read_until(run, "applied in")
    small_server.restart()
    result = finish(run, started)
    rerun = run_migrator("upgrade", "head", env={**env, "SAMPLE_SLEEP": "0"})

    # The lock's session ended under the lock: 7, the revision in flight rolled back.
    assert result.status == 7, result.output
    assert "migration lock was lost" in result.stderr
    assert "unexpected" not in result.stderr
    assert rerun.status == 0, rerun.output
    assert applied_counts(small_server) == ALL_ONCE


def test_a_server_restart_during_env_pys_own_connection_is_an_outage(
    small_server: SmallServer,
) -> None:
    env = {**small_server.env, **OWN_CONNECTION, "SAMPLE_SLEEP": "30"}
    started = time.monotonic()
    run = start_migrator("upgrade", "head", env=env)
    read_until(run, "applied in")
    small_server.restart()
    result = finish(run, started)

    # Both sessions ended: the lock was lost (7), never "a migration failed" (1).
    assert result.status == 7, result.output
    assert "unexpected" not in result.stderr
    assert applied_counts(small_server) == {"a1a1a1a1a1a1": 1}


def test_no_connection_for_env_py_under_the_lock_is_exit_3_within_seconds(
    small_server: SmallServer,
) -> None:
    # One connection for the role: before the lock the run's session makes room for
    # env.py's own; under the lock it cannot, and holding the lock the run waits 5 s only.
    small_server.query(f"ALTER ROLE {ROLE} CONNECTION LIMIT 1")
    env = {**small_server.env, **OWN_CONNECTION}
    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 3, result.output
    assert "while this run held the migration lock (released; nothing more ran)" in result.stderr
    assert "too many connections for role" in result.stderr
    assert result.seconds < 20
    assert "applied" not in small_server.tables()  # the first revision never ran
    assert small_server.advisory_locks() == 0


def test_a_read_only_database_is_waited_for_then_exit_3(database: Database) -> None:
    run_migrator("upgrade", "a1a1a1a1a1a1", env={**database.env, **AUDITED})
    with database.server.admin.connect() as connection:
        connection.execute(
            sa.text(f"ALTER DATABASE {database.name} SET default_transaction_read_only = on")
        )
    result = run_migrator(
        "upgrade", "head", env={**database.env, **AUDITED, "MIGRATOR_WAIT_TIMEOUT": "1.5"}
    )
    current = run_migrator("current", env={**database.env, **AUDITED})

    assert result.status == 3, result.output
    assert "read-only" in result.stderr
    assert "migration lock" not in result.stderr
    assert current.status == 0, current.output
    assert current.stdout.startswith("a1a1a1a1a1a1")
