"""The migration lock, and who holds what a migration waits for.

A session-level advisory lock on a connection of its own, held for the whole run: a
transaction-level lock would go at the first per-revision commit. It is polled with
`pg_try_advisory_lock`, because a blocking `pg_advisory_lock` cannot honour a timeout.
A killed run's lock goes with its connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine, Row
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_result,
    stop_after_attempt,
    stop_before_delay,
    stop_when_event_set,
    wait_random_exponential,
)

from migrator import signals
from migrator.errors import LockTimeout
from migrator.logs import log

# One key for every release of every project, so that any two runs on a database serialise.
LOCK_KEY = int.from_bytes(b"migrator", "big")
REPORT_EVERY_SECONDS = 5.0

_LOCK_HOLDER = text(
    """
    SELECT a.pid, a.application_name, a.client_addr, a.state,
           extract(epoch FROM now() - a.backend_start) AS seconds
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = :high AND l.objid = :low AND l.objsubid = 1
    """
)

# Sessions holding locks on this database's own tables, oldest transaction first: after a
# lock timeout (55P03) the migration is no longer waiting, so this is who it waited behind.
_TABLE_LOCK_HOLDERS = text(
    """
    SELECT DISTINCT a.pid, a.application_name, a.client_addr, a.state,
           extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start)) AS seconds,
           c.relname
    FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    JOIN pg_class c ON c.oid = l.relation
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.locktype = 'relation' AND l.granted AND a.pid <> pg_backend_pid()
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg_toast%'
    ORDER BY seconds DESC
    LIMIT 3
    """
)


@contextmanager
def migration_lock(engine: Engine, timeout: float) -> Iterator[Connection]:
    """Hold the migration lock; yields its connection, idle and in autocommit, for queries."""
    connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        _take(connection, timeout)
        yield connection
    finally:
        connection.close()  # ends the session, which releases the lock


def _take(connection: Connection, timeout: float) -> None:
    started = time.monotonic()
    last_report = [0.0]

    def try_lock() -> bool:
        taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY})
        return bool(taken.scalar())

    def report(state: RetryCallState) -> None:
        elapsed = time.monotonic() - started
        if last_report[0] == 0.0 or elapsed - last_report[0] >= REPORT_EVERY_SECONDS:
            last_report[0] = elapsed
            log.info(
                "waiting for the migration lock (%.0f of %g s), held by %s",
                elapsed,
                timeout,
                lock_holder(connection),
            )

    retrying = Retrying(
        retry=retry_if_result(lambda taken: not taken),
        wait=wait_random_exponential(multiplier=0.05, max=0.5),
        stop=(stop_before_delay(timeout) if timeout > 0 else stop_after_attempt(1))
        | stop_when_event_set(signals.stop_requested),
        sleep=signals.sleep,
        before_sleep=report,
        retry_error_callback=lambda state: False,
    )
    if retrying(try_lock):
        log.info(
            "migration lock taken after %.2f s",
            time.monotonic() - started,
            extra={"fields": {"event": "locked"}},
        )
        return
    if signals.stop_requested.is_set():
        raise signals.interrupted(" while waiting for the migration lock")
    raise LockTimeout(
        f"migration lock not taken within {timeout:g} s; held by {lock_holder(connection)}"
    )


def lock_holder(connection: Connection) -> str:
    high, low = LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF
    row = connection.execute(_LOCK_HOLDER, {"high": high, "low": low}).first()
    return "nobody (it was just released)" if row is None else describe_session(row)


def table_lock_holders(connection: Connection) -> str:
    rows = connection.execute(_TABLE_LOCK_HOLDERS).all()
    if not rows:
        return "a session that has since finished"
    return "; ".join(f"{describe_session(row)} on table {row.relname}" for row in rows)


def describe_session(row: Row[tuple[object, ...]]) -> str:
    client = row.client_addr or "local socket"
    name = row.application_name or "(no application_name)"
    return f"pid {row.pid} ({name}, {client}, {row.state}, for {float(row.seconds):.0f} s)"
