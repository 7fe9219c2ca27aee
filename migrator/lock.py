"""The migration lock, and who holds what a migration waits for.

A session-level advisory lock on the run's session, held for the whole run: a
transaction-level lock would go at the first per-revision commit. It is polled with
`pg_try_advisory_lock`, because a blocking `pg_advisory_lock` cannot honour a timeout.
A killed run's lock goes with its session.

A session can end behind the run's back (terminated, a failover, a network that stalls), and
with it the lock: so each revision commits only after a fence, inside its own transaction,
has seen the lock still held; and when env.py runs the revisions on a connection of its own,
a heartbeat watches the lock's session and stops the run within seconds of losing it.
"""

from __future__ import annotations

import enum
import functools
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause
from tenacity import retry_if_result, wait_random_exponential

from migrator import retry, signals, wait
from migrator.catalog import SESSION_MARK, this_database, user_schema
from migrator.errors import (
    ConnectionLost,
    DatabaseUnreachable,
    LockLost,
    LockTimeout,
    MigratorError,
    connection_lost,
    reason,
)
from migrator.logs import log
from migrator.session import Session, transaction_pooling

# One key for every release of every project, so that any two runs on a database serialise
# (a schema target of a fleet: any two runs on that schema).
LOCK_KEY = int.from_bytes(b"migrator", "big")
HEARTBEAT_SECONDS = 2.0
# How far past the lock timeout a lock query may stall before the run gives up on it.
STALL_GRACE_SECONDS = 1.0
# While waiting for the lock, the longest pause between two looks (each a new connection).
POLL_SECONDS = 2.0
REPORT_SECONDS = retry.REPORT_EVERY_SECONDS


class _Outcome(enum.Enum):
    TAKEN = "taken"
    DONE = "another run did the work"
    BUSY = "held by another run"


def lock_key(schema: str | None) -> int:
    """The key for the schema a session works in, as the server says (current_schema()), not
    as the target was spelled: the database's own for public; a schema's own (the tenants of
    one database run side by side, whether named by MIGRATOR_SCHEMA or the URL's options)."""
    if schema is None or schema == "public":
        return LOCK_KEY
    return (LOCK_KEY >> 32 << 32) | zlib.crc32(schema.encode())


def _key_parts(key: int) -> dict[str, int]:
    """The key as pg_locks shows it."""
    return {"high": key >> 32, "low": key & 0xFFFFFFFF}


def _held_by(pid: str) -> str:
    """A condition: the session `pid` holds the migration lock (the key as :high, :low)."""
    return f"""
    EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND pid = {pid}
          AND {this_database("database")}
          AND classid = :high AND objid = :low AND objsubid = 1)
"""


_OURS = f"{SESSION_MARK} = :token"
# NULL when the statement reached another server session than ours: a transaction pooler.
_TRY_LOCK = text(f"SELECT CASE WHEN {_OURS} THEN pg_try_advisory_lock(:key) END")
_UNLOCK = text(f"SELECT CASE WHEN {_OURS} THEN pg_advisory_unlock(:key) END")
_CONFIRM = text(f"SELECT CASE WHEN {_OURS} THEN {_held_by('pg_backend_pid()')} END")
_FENCE_SQL = f"SELECT {_held_by(':pid')} AS held, pg_backend_pid() AS pid, {SESSION_MARK} AS token"
_FENCE = text(_FENCE_SQL)


@functools.cache
def _fence_beside(statement: str) -> TextClause:
    return text(f"WITH beside AS ({statement}) {_FENCE_SQL}")


# Another role's session shows its pid but not its times or state (without pg_read_all_stats).
_LOCK_HOLDER = text(
    f"""
    SELECT a.pid, a.usename, a.application_name, a.client_addr, a.state,
           extract(epoch FROM now() - a.backend_start) AS seconds
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND {this_database("l.database")}
      AND l.classid = :high AND l.objid = :low AND l.objsubid = 1
    """
)

# Sessions holding locks on this database's own tables, oldest transaction first: after a
# lock timeout (55P03) the migration is no longer waiting, so this is who it waited behind.
_TABLE_LOCK_HOLDERS = text(
    f"""
    SELECT DISTINCT a.pid, a.usename, a.application_name, a.client_addr, a.state,
           extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start)) AS seconds,
           c.relname
    FROM pg_locks l
    JOIN pg_stat_activity a ON a.pid = l.pid
    JOIN pg_class c ON c.oid = l.relation
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.locktype = 'relation' AND l.granted AND a.pid <> pg_backend_pid()
      AND {this_database("l.database")} AND {user_schema("n.nspname")}
    ORDER BY seconds DESC NULLS LAST
    LIMIT 3
    """
)


_TABLE_LOCKS = text(
    f"""
    SELECT l.pid, l.relation::bigint AS relation
    FROM pg_locks l
    JOIN pg_class c ON c.oid = l.relation
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid()
      AND {this_database("l.database")} AND {user_schema("n.nspname")}
    """
)


class MigrationLock:
    """The migration lock held by the run's session."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.key = lock_key(session.identity.schema)
        self.holder = "an unknown session"
        self._released = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def take(self, timeout: float, still_needed: Callable[[], bool]) -> bool:
        """Wait for the lock; False when, meanwhile, `still_needed` says there is nothing left
        to do (another run did it), so queued runs do not each take the lock to find that.

        A waiting run holds no session between two looks: behind a session pool, its
        server connection is one the run holding the lock may need (env.py's own)."""
        started = time.monotonic()
        give_up_at = started + timeout
        self._reported_at: float | None = None
        retrying = retry.retrying(
            retry=retry_if_result(lambda outcome: outcome is _Outcome.BUSY),
            wait=wait_random_exponential(multiplier=0.1, max=POLL_SECONDS),
            stop=retry.before_deadline(timeout),
            retry_error_callback=lambda state: _Outcome.BUSY,
        )
        outcome = retrying(self._poll, started, give_up_at, still_needed)
        if outcome is _Outcome.TAKEN:
            self.session.patience = wait.Patience(
                min(wait.UNDER_LOCK_SECONDS, self.session.settings.wait_timeout), under_lock=True
            )
            log.info(
                "migration lock taken after %.2f s",
                time.monotonic() - started,
                extra={"fields": {"event": "locked"}},
            )
            return True
        if outcome is _Outcome.DONE:
            return False
        if signals.stop_requested.is_set():
            raise signals.interrupted(" while waiting for the migration lock")
        raise LockTimeout(
            f"migration lock not taken within {timeout:g} s (MIGRATOR_LOCK_TIMEOUT); held by "
            f"{self.holder}"
        )

    def _poll(
        self, started: float, give_up_at: float, still_needed: Callable[[], bool]
    ) -> _Outcome:
        """One look: connect (unless connected), try the lock, and when another run holds
        it, ask whether the work is still needed, then disconnect."""
        if self.session.closed:
            try:
                self.session.reconnect(announce=False, timeout=give_up_at - time.monotonic())
            except DatabaseUnreachable as error:
                if signals.stop_requested.is_set():
                    raise
                raise LockTimeout(
                    f"migration lock not taken within {give_up_at - started:g} s "
                    f"(MIGRATOR_LOCK_TIMEOUT): {error}"
                ) from None
        outcome = _Outcome.BUSY
        waited = self.session.answer_deadline  # a look's statements are quick
        try:
            with signals.deadline(waited, self.session.no_answer(waited)):
                if self._try(give_up_at):
                    outcome = _Outcome.TAKEN
                elif not still_needed():
                    outcome = _Outcome.DONE
                else:
                    self._report(started, give_up_at)
        except MigratorError as error:
            # A restart or a terminated session while waiting: it held nothing yet.
            if not isinstance(error, ConnectionLost) or signals.stop_requested.is_set():
                raise
            log.warning("the session waiting for the migration lock ended (%s)", error)
        finally:
            if outcome is not _Outcome.TAKEN:
                self.session.close()
        return outcome

    def _report(self, started: float, give_up_at: float) -> None:
        """Who holds the lock: said at the first look, then every few seconds, and read at
        the last look (the lock timeout names the holder)."""
        now = time.monotonic()
        last_look = now + POLL_SECONDS >= give_up_at
        if self._reported_at is not None and now - self._reported_at < REPORT_SECONDS:
            if last_look:
                self.holder = lock_holder(self.session)
            return
        self._reported_at = now
        self.holder = lock_holder(self.session)
        log.info(
            "waiting for the migration lock (%.0f of %g s), held by %s",
            now - started,
            give_up_at - started,
            self.holder,
        )

    def _try(self, give_up_at: float) -> bool:
        stalled = LockTimeout(
            "migration lock not taken within the lock timeout: the database stopped answering"
        )
        try:
            with signals.deadline(give_up_at - time.monotonic() + STALL_GRACE_SECONDS, stalled):
                row = self.session.query(_TRY_LOCK, token=self.session.token, key=self.key)
        except DBAPIError as error:
            if connection_lost(error):
                raise ConnectionLost(reason(error)) from None
            raise
        taken = None if row is None else row[0]
        if taken is None:
            raise transaction_pooling()
        return bool(taken)

    def fence(
        self,
        migration_connection: Connection,
        what: str,
        beside: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Inside a revision's transaction, before it commits: is the lock still ours?
        `beside`, a statement that changes rows (the deploy ledger's row) and its parameters,
        runs in the same round trip; it commits with the revision, or not at all."""
        if signals.stop_requested.is_set():
            raise signals.interrupted()
        parameters = {"pid": self.session.pid, **_key_parts(self.key)}
        fence = _FENCE
        if beside is not None:
            fence = _fence_beside(beside[0])
            parameters.update(beside[1])
        row = migration_connection.execute(fence, parameters).one()
        shares_session = migration_connection is self.session.connection
        if shares_session and (row.pid != self.session.pid or row.token != self.session.token):
            raise transaction_pooling()
        if not row.held:
            raise LockLost(f"the migration lock was lost before {what} committed; rolled back")

    def held(self) -> tuple[bool, str]:
        """Whether the lock's own session still holds the lock, and if not, why not."""
        try:
            row = self.session.query(_CONFIRM, token=self.session.token, **_key_parts(self.key))
        except Exception as error:  # whatever went wrong, the lock is not known to be held
            return False, f"its session ended: {reason(error)}"
        if row is None or not row[0]:
            return False, "it is no longer held"
        return True, ""

    def confirm(self) -> None:
        """Stop the run unless the lock's session still holds the lock."""
        held, problem = self.held()
        if not held:
            signals.stop(LockLost(f"the migration lock was lost ({problem})"))
            raise signals.interrupted()

    def watch(self) -> None:
        """Heartbeat: confirm the lock every few seconds while env.py works elsewhere; also
        keeps the lock's session from ever looking idle."""
        if self._heartbeat is not None:
            return

        def beat() -> None:
            while not self._released.wait(HEARTBEAT_SECONDS):
                with suppress(Exception):  # confirm() stops the run itself when the lock is gone
                    self.confirm()
                if signals.stop_requested.is_set():
                    return

        self._heartbeat = threading.Thread(target=beat, name="migrator-heartbeat", daemon=True)
        self._heartbeat.start()

    def release(self) -> None:
        self._released.set()
        connection = self.session.connection
        # A session that is gone released its lock with it (and SQLAlchemy would open a new
        # one for the statement, through a network that may be what ended the old one).
        if not (connection.closed or connection.invalidated):
            with suppress(Exception), self.session.mutex:
                connection.execute(
                    _UNLOCK.execution_options(migrator_cleanup=True),
                    {"token": self.session.token, "key": self.key},
                )
                connection.commit()
        self.session.patience = wait.Patience(self.session.settings.wait_timeout)


@contextmanager
def migration_lock(
    session: Session, timeout: float, still_needed: Callable[[], bool]
) -> Iterator[MigrationLock | None]:
    """Hold the migration lock on the run's session; None when the work was done meanwhile."""
    lock = MigrationLock(session)
    if not lock.take(timeout, still_needed):
        yield None
        return
    try:
        yield lock
    finally:
        lock.release()


def lock_holder(session: Session) -> str:
    try:
        row = session.query(_LOCK_HOLDER, **_key_parts(lock_key(session.identity.schema)))
    except DBAPIError as error:
        return f"an unknown session ({reason(error)})"
    return "nobody (it was just released)" if row is None else describe_session(row)


def table_lock_holders(session: Session) -> str:
    try:
        with session.mutex:
            rows = session.connection.execute(_TABLE_LOCK_HOLDERS).all()
            session.connection.commit()
    except DBAPIError as error:
        return f"unknown sessions ({reason(error)})"
    if not rows:
        return "a session that has since finished"
    return "; ".join(f"{describe_session(row)} on table {row.relname}" for row in rows)


def table_locks(session: Session) -> set[tuple[int, int]]:
    """(pid, table) for each lock other sessions hold on this database's own tables."""
    try:
        with session.mutex:
            rows = session.connection.execute(_TABLE_LOCKS).all()
            session.connection.commit()
    except DBAPIError:
        return set()  # nothing known to wait for: retry at once
    return {(row.pid, row.relation) for row in rows}


def describe_session(row: Row[Any]) -> str:
    """What the role can see of a session: another role's shows little but its pid."""
    if row.seconds is None and not row.state:
        role = f"role {row.usename}" if row.usename else "another role"
        return f"pid {row.pid} (a session of {role}; its details are hidden from this role)"
    client = row.client_addr or "local socket"
    name = row.application_name or "(no application_name)"
    return f"pid {row.pid} ({name}, {client}, {row.state}, for {float(row.seconds):.0f} s)"
