"""The run's session: one connection to read the database's revisions, hold the migration
lock and (handed to env.py) run the revisions, so that the lock and the work live and die
together and a run needs one connection slot.

It is set up so that it cannot hang or be ended behind the run's back (keepalives, idle
timeouts of its own, the user's timeouts applied and read back), and marked with a token,
so that a pooler handing a transaction to another server session is caught (PgBouncer's
transaction mode: a session-level lock would then be shared or left behind).
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, Row
from sqlalchemy.exc import NoSuchModuleError
from sqlalchemy.pool import NullPool

from migrator import signals, wait
from migrator.catalog import IN_RECOVERY, READ_ONLY, SESSION_MARK, SESSION_TOKEN, user_schema
from migrator.config import Settings, milliseconds, search_path
from migrator.errors import ConnectionLost, LockLost, MigratorError, UsageError
from migrator.logs import log
from migrator.scratch import Identity, session_identity

KEEP_BUSY_SECONDS = 2.0
# The server's side of the session's liveness, by the server version that has the setting.
_SERVER_SETTINGS_SINCE = {
    "idle_session_timeout": 140000,
    "client_connection_check_interval": 140000,
    "tcp_user_timeout": 120000,
}
_ALIVE = text("SELECT 1")
_SET = text("SELECT set_config(key, value, false) FROM json_each_text(CAST(:values AS json))")
_MARK = text(f"SELECT {SESSION_MARK}")
_CHECK = text(
    f"""
    SELECT pg_backend_pid() AS pid,
           {SESSION_MARK} AS token,
           {IN_RECOVERY},
           {READ_ONLY},
           current_setting('statement_timeout') AS statement_timeout,
           current_setting('lock_timeout') AS lock_timeout,
           (SELECT setting FROM pg_settings WHERE name = 'statement_timeout') AS statement_ms,
           (SELECT setting FROM pg_settings WHERE name = 'lock_timeout') AS lock_ms,
           current_schema() IS NOT NULL AS schema_exists
    """
)
_INVALID_INDEXES = text(
    f"""
    SELECT i.indexrelid::regclass::text AS index, i.indrelid::regclass::text AS "table"
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE NOT i.indisvalid AND {user_schema("n.nspname")}
    ORDER BY 1
    """
)


def transaction_pooling() -> UsageError:
    return UsageError(
        "a transaction pooler (PgBouncer pool_mode=transaction?) handed this run's "
        "transactions to different server sessions, so the migration lock cannot hold; "
        "point the migrator at PostgreSQL directly, or at a session-mode pool"
    )


def missing_driver(url: URL) -> UsageError:
    if url.get_driver_name() == "psycopg":
        return UsageError(
            "the database driver psycopg (psycopg 3, what SQLAlchemy 2.1 runs postgresql:// "
            "on) is not installed: pip install 'migrator-job[psycopg]', or write the URL as "
            "postgresql+psycopg2:// to use psycopg2"
        )
    return UsageError(
        "the database driver psycopg2 is not installed: pip install 'migrator-job[binary]' "
        "(or [source] to build it), or write the URL as postgresql+psycopg:// to use psycopg 3"
    )


class Session:
    """The run's connection to the database, and the engine that makes it."""

    def __init__(self, settings: Settings, *, writable: bool) -> None:
        self.settings = settings
        self.writable = writable
        self.token = uuid.uuid4().hex
        self.pid = 0
        # How long a new connection may wait now (shorter under the migration lock).
        self.patience = wait.Patience(settings.wait_timeout)
        # Whether the session holds nothing (no lock, no transaction) and may be closed when
        # env.py opens a connection of its own: behind a small session pool, runs that each
        # held one connection and waited for a second would wait for each other.
        self.idle = False
        # Another thread (the lock's heartbeat) may query while the run waits on env.py.
        self.mutex = threading.RLock()
        try:
            self.engine = create_engine(settings.connection_url(), poolclass=NullPool)
        except (NoSuchModuleError, ImportError):
            raise missing_driver(settings.connection_url()) from None
        # The database and server reached, by what the server says (migrator.scratch); read
        # by _prepare on each new session (the server may have restarted in between).
        self.identity: Identity
        self.connection = wait.connect(self.engine, settings.wait_timeout, self._prepare)
        # A pooler shows itself on a second connection: PostgreSQL starts a new session, a
        # session pool resets the one it hands out, a transaction pool hands back the one
        # just used (its idle sessions are reused last-in first-out) with our mark on it.
        self.reconnect(announce=False)

    def reconnect(self, *, announce: bool = True, timeout: float | None = None) -> None:
        """A new session in place of one that ended, within `timeout` (the wait timeout)."""
        self.close()
        self.connection = wait.connect(
            self.engine,
            self.settings.wait_timeout if timeout is None else timeout,
            self._prepare,
            announce=announce,
        )

    def make_room(self, dialect: Any) -> None:
        """Before another engine's connection is made (env.py's own): close this one if it
        is idle. Not for this engine's own (SQLAlchemy replacing a lost one)."""
        if self.idle and dialect is not self.engine.dialect:
            self.close()

    @property
    def closed(self) -> bool:
        return self.connection.closed

    @property
    def answer_deadline(self) -> float:
        """How long one of the run's own statements (all quick) may go unanswered before the
        run stops: past when TCP itself gives up on a dead link (keepalives and
        tcp_user_timeout, within MIGRATOR_NETWORK_TIMEOUT), which ends just the session and
        lets the run reconnect. Only a proxy that stops forwarding but still acknowledges
        every packet gets this far."""
        return 2 * self.settings.network_timeout + 1

    def query(self, sql: Any, **params: Any) -> Row[Any] | None:
        """One statement in a transaction of its own; its first row."""
        with self.mutex:
            if self.connection.invalidated:
                # SQLAlchemy would run it on a new session, without this run's setup.
                raise ConnectionLost("the session ended")
            waited = self.answer_deadline
            with signals.deadline(waited, self.no_answer(waited)):
                return self._query(sql, params)

    def _query(self, sql: Any, params: dict[str, Any]) -> Row[Any] | None:
        try:
            row = self.connection.execute(sql, params).first()
            self.connection.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                self.connection.rollback()
            raise
        return row

    def stalled(self) -> MigratorError | None:
        """Whether a statement of the run got no answer long after the server would have
        given one: with MIGRATOR_STATEMENT_TIMEOUT, the server answers every statement
        within it, so no answer for longer than that and MIGRATOR_NETWORK_TIMEOUT is a
        network or a proxy that stopped forwarding (behind a proxy that still acknowledges
        the packets, keepalives do not notice)."""
        limit = self.settings.statement_timeout
        waited = signals.longest_in_flight()
        if limit is None or waited <= limit + self.settings.network_timeout:
            return None
        return self.no_answer(waited)

    def no_answer(self, seconds: float) -> MigratorError:
        what = (
            f"the database did not answer for {seconds:.0f} s (a stalled network, or a proxy "
            "that stopped forwarding)"
        )
        if self.patience.under_lock:
            return LockLost(
                f"the migration lock cannot be known to be held: {what}; the server rolls back "
                "the revision in flight when it ends the session"
            )
        return ConnectionLost(what)

    @contextlib.contextmanager
    def kept_busy(self) -> Iterator[None]:
        """While the run works elsewhere (the safety measurement), a statement every few
        seconds, so that the session's idle_session_timeout does not end it."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(KEEP_BUSY_SECONDS):
                with contextlib.suppress(Exception):  # a lost session shows at its next use
                    self.query(_ALIVE)

        beating = threading.Thread(target=beat, name="migrator-keep-busy", daemon=True)
        beating.start()
        try:
            yield
        finally:
            done.set()
            beating.join()

    def invalid_indexes(self) -> list[str]:
        """INVALID indexes (an interrupted CREATE INDEX CONCURRENTLY leaves one), each with
        the statement that drops it; read on a new connection, since this one may be gone."""
        try:
            with signals.cleanup_connection(self.engine) as connection:
                rows = connection.execute(_INVALID_INDEXES).all()
        except Exception as error:  # a report of a failure must not hide the failure
            log.warning("could not look for INVALID indexes: %s", error)
            return []
        return [
            f"INVALID index {row.index} on {row.table} (DROP INDEX CONCURRENTLY {row.index})"
            for row in rows
        ]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.connection.close()

    def dispose(self) -> None:
        self.close()
        self.engine.dispose()

    def _prepare(self, connection: Connection) -> None:
        """Set the session up, read it back, and refuse what this run cannot work on."""
        version = _version_number(connection)
        values = {SESSION_TOKEN: self.token, **self._server_settings()}
        for name, since in _SERVER_SETTINGS_SINCE.items():
            if version < since:
                values.pop(name, None)
        # In one transaction, so on one server session even behind a transaction pooler.
        marked = connection.execute(_MARK).scalar()
        connection.execute(_SET, {"values": json.dumps(values)})
        connection.commit()
        if marked:  # a session some run used before, handed on without a reset
            raise transaction_pooling()
        row = connection.execute(_CHECK).one()
        connection.commit()
        if row.token != self.token:
            raise transaction_pooling()
        self._check_timeouts(row)
        if self.settings.schema is not None and not row.schema_exists:
            raise UsageError(
                f"MIGRATOR_SCHEMA: schema {self.settings.schema} does not exist in this "
                "database (create it when the tenant is created)"
            )
        if self.writable and (row.in_recovery or row.read_only):
            why = (
                "in recovery (a standby; a failover in progress?)"
                if row.in_recovery
                else ("default_transaction_read_only is on")
            )
            raise wait.NotReady(f"the database is read-only: {why}")
        self.pid = row.pid
        # Here, not after: a session lost while it is read is then waited out as any other.
        self.identity = session_identity(connection)

    def _server_settings(self) -> dict[str, str]:
        settings = self.settings
        keepalives = settings.keepalives()
        values = {
            # When the client vanishes, the server ends the session and releases what it
            # holds: keepalives for a silent peer; these two for a proxy that stopped
            # forwarding but still answers for the client, in a transaction or between two.
            # They replace the role's own (which may be shorter than a pause of the run's):
            # the run is never silent for that long (kept_busy covers its own long pauses).
            "idle_session_timeout": str(settings.network_timeout * 2000),
            "idle_in_transaction_session_timeout": str(settings.network_timeout * 2000),
            "tcp_keepalives_idle": keepalives["keepalives_idle"],
            "tcp_keepalives_interval": keepalives["keepalives_interval"],
            "tcp_keepalives_count": keepalives["keepalives_count"],
            "tcp_user_timeout": keepalives["tcp_user_timeout"],
            "client_connection_check_interval": str(settings.network_timeout * 1000 // 3),
        }
        if settings.schema is not None:  # a fleet's schema target: env.py works in it
            values["search_path"] = search_path(settings.schema)
        # Set here as well as in the startup options: a pooler may ignore those.
        if settings.statement_timeout is not None:
            values["statement_timeout"] = str(milliseconds(settings.statement_timeout))
        if settings.ddl_lock_timeout is not None:
            values["lock_timeout"] = str(milliseconds(settings.ddl_lock_timeout))
        return values

    def check_timeouts(self, connection: Connection) -> None:
        """Refuse a connection (env.py's own) on which the user's timeouts did not apply."""
        self._check_timeouts(connection.execute(_CHECK).one())

    def _check_timeouts(self, row: Row[Any]) -> None:
        wanted = {
            "MIGRATOR_STATEMENT_TIMEOUT": ("statement_timeout", self.settings.statement_timeout),
            "MIGRATOR_DDL_LOCK_TIMEOUT": ("lock_timeout", self.settings.ddl_lock_timeout),
        }
        applied = {"statement_timeout": row.statement_ms, "lock_timeout": row.lock_ms}
        for variable, (name, seconds) in wanted.items():
            if seconds is not None and applied[name] != str(milliseconds(seconds)):
                raise UsageError(
                    f"{variable}: the server did not apply it ({name} is {applied[name]} ms; "
                    "a pooler that ignores libpq's `options`?): hand env.py the migrator's "
                    "connection (config.attributes['connection']) or connect directly"
                )


def _version_number(connection: Connection) -> int:
    major, minor, *_ = (*(connection.dialect.server_version_info or ()), 0, 0)
    return int(major) * 10000 + int(minor) if int(major) >= 10 else int(major) * 10000
