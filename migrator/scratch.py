"""Scratch work (verify's stairway, the safety measurement) in a process of its own, where
no connection can reach anything but the scratch database.

Why a process: a project's env.py often takes its URL from its own settings rather than
from the `sqlalchemy.url` the migrator hands it (the tutorial's env.py sets it from a URL
its `persistence.db` module built from DB_* when first imported). A fresh interpreter whose
DATABASE_URL, DB_*, PG* and `sqlalchemy.url` all name the scratch database serves such a
project as it is.

Why a guard as well: an env.py may take its URL from somewhere else still (a file, a
hard-coded default). Before the work starts, every way of connecting in that process
(every SQLAlchemy pool, and psycopg2's and psycopg 3's own `connect`) is made to ask the new
session what it reached: `current_database()` and the server (its `system_identifier` and
start time). A connection that reached anything but the scratch database is closed before
its first statement, and the work stops with a usage error (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool, Pool
from sqlalchemy.schema import CreateSchema

from migrator import signals, wait
from migrator.config import Settings
from migrator.errors import MigratorError, UsageError, failure, reason
from migrator.logs import MaskedStream, setup_logging
from migrator.masking import Mask

# What a session reached, by what the server says. system_identifier tells clusters apart
# (a managed service may not grant pg_control_system: then the start time alone does).
IDENTITY_SQL = """
    SELECT current_database(),
           CASE WHEN has_function_privilege('pg_control_system()', 'EXECUTE')
                THEN (SELECT system_identifier::text FROM pg_control_system()) END,
           pg_postmaster_start_time()::text,
           current_schema()
"""
# How long a stopped child gets to roll back and exit before it is killed.
CHILD_STOP_SECONDS = signals.STOP_GRACE_SECONDS - 1


@dataclass(frozen=True)
class Identity:
    """The database a session reached, and the server it runs on."""

    database: str
    system: str | None  # pg_control_system's system_identifier, where the role may read it
    started: str  # pg_postmaster_start_time: one running server
    schema: str | None  # compared only where both name one

    def same_database(self, other: Identity) -> bool:
        """The same database of the same server (and the same schema, where either names
        one: a fleet's schema target)."""
        schemas = {self.schema, other.schema} - {None}
        return self.database == other.database and self.same_server(other) and len(schemas) <= 1

    def same_server(self, other: Identity) -> bool:
        """By system identifier where both sessions could read it (a restart in between
        keeps it); else by start time, the one thing left to tell two servers apart."""
        if self.system is not None and other.system is not None:
            return self.system == other.system
        return self.started == other.started

    def describe(self) -> str:
        server = f"system {self.system}" if self.system else f"started {self.started}"
        return f"database {self.database} on the server of {server}"


def identity_of(dbapi_connection: Any) -> Identity:
    """Ask a driver-level connection what it reached, leaving it as it found it."""
    in_transaction = _in_transaction(dbapi_connection)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(IDENTITY_SQL)
        row = cursor.fetchone()
    finally:
        cursor.close()
    if not in_transaction and not getattr(dbapi_connection, "autocommit", False):
        dbapi_connection.rollback()  # end the transaction the query began, and only that
    return Identity(str(row[0]), row[1], str(row[2]), row[3])


def session_identity(connection: Connection) -> Identity:
    """What an SQLAlchemy connection (env.py's own) reached, without touching its
    transaction: Alembic decides how to commit by whether one is open."""
    return identity_of(connection.connection.dbapi_connection)


def _in_transaction(dbapi_connection: Any) -> bool:
    info = getattr(dbapi_connection, "info", None)  # psycopg2 and psycopg 3
    status = getattr(info, "transaction_status", None)
    return status is not None and int(status) != 0  # 0: idle, outside a transaction


class Escaped(UsageError):
    """A connection made during scratch work reached something other than the scratch."""


class Guard:
    """Checks every new connection in this process against the scratch database's identity."""

    def __init__(self, expected: Identity) -> None:
        self.expected = expected
        self.escaped: Escaped | None = None

    def install(self) -> None:
        event.listen(Pool, "connect", self._pool_connect)
        with contextlib.suppress(ImportError):
            import psycopg2

            psycopg2.connect = self._checked(psycopg2.connect)
        with contextlib.suppress(ImportError):
            import psycopg

            connect = psycopg.Connection.__dict__["connect"].__func__
            guard = self

            def checked_connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
                return guard.check(connect(cls, *args, **kwargs))

            psycopg.Connection.connect = classmethod(checked_connect)  # type: ignore[assignment]
            psycopg.connect = psycopg.Connection.connect

    def check(self, dbapi_connection: Any) -> Any:
        """The connection, when it reached the scratch database; else it is closed and the
        work stops (and stays stopped, even if env.py catches the error)."""
        try:
            found = identity_of(dbapi_connection)
        except Exception as error:
            dbapi_connection.close()
            message = f"could not ask a new connection what it reached: {reason(error)}"
            raise self._stop(message) from None
        if self.escaped is not None or not found.same_database(self.expected):
            dbapi_connection.close()
            raise self._stop(self._elsewhere(found))
        return dbapi_connection

    def _elsewhere(self, found: Identity) -> str:
        expected = self.expected
        if found.database == expected.database and found.same_server(expected):
            # The scratch database, outside MIGRATOR_SCHEMA's schema: the real run refuses
            # such a connection too (its search_path is not the one the migrator sets).
            return (
                f"the project connected to the scratch database {expected.database} in schema "
                f"{found.schema}, not in schema {expected.schema} (MIGRATOR_SCHEMA); nothing "
                "ran there. Let env.py take its URL from config.get_main_option("
                "'sqlalchemy.url') (it carries the search_path), or use the connection in "
                "config.attributes['connection']"
            )
        return (
            f"the project connected to {found.describe()}, not to the scratch database "
            f"{expected.database}; nothing ran there. Let env.py take its URL from "
            "config.get_main_option('sqlalchemy.url') (or DATABASE_URL, DB_*), or use "
            "the connection in config.attributes['connection']"
        )

    def _stop(self, message: str) -> Escaped:
        if self.escaped is None:
            self.escaped = Escaped(f"scratch work stopped: {message}")
        return self.escaped

    def _checked(self, connect: Callable[..., Any]) -> Callable[..., Any]:
        def checked(*args: Any, **kwargs: Any) -> Any:
            return self.check(connect(*args, **kwargs))

        return checked

    def _pool_connect(self, dbapi_connection: Any, record: Any) -> None:
        self.check(dbapi_connection)


def run(
    scratch: Settings,
    work: Callable[..., Any],
    *args: Any,
    forbidden: Identity | None = None,
) -> Any:
    """`work(scratch, *args)` in a child process whose environment names the scratch
    database; its value, or its error raised here. `forbidden` is the database being
    migrated: the scratch must never be it."""
    assert scratch.database_url is not None
    reader, writer = os.pipe()
    child = subprocess.Popen(
        # -P: the project's directory is on sys.path only as alembic.ini puts it there,
        # as in this process; a file of the project never shadows a library.
        [sys.executable, "-P", "-c", "from migrator.scratch import child; child()", str(writer)],
        stdin=subprocess.PIPE,
        env=_environment(scratch.database_url),
        pass_fds=(writer,),
    )
    os.close(writer)
    received: list[bytes] = []
    with os.fdopen(reader, "rb") as results:
        # Read while waiting: a large outcome fills the pipe before the child can end.
        reading = threading.Thread(target=lambda: received.append(results.read()), daemon=True)
        reading.start()
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            pickle.dump((scratch, work, args, forbidden), child.stdin)
            child.stdin.close()
        _wait(child)
        reading.join()
    payload = received[0] if received else b""
    if signals.stop_requested.is_set():
        raise signals.interrupted()
    if not payload:
        raise MigratorError(f"the scratch work's process ended with status {child.returncode}")
    kind, *rest = pickle.loads(payload)
    if kind == "value":
        return rest[0]
    error_type, message, exit_status = rest
    error = error_type.__new__(error_type)
    error.args = (message,)
    error.exit_status = exit_status
    raise error


def _wait(child: subprocess.Popen[bytes]) -> None:
    """Until the child ends; a stop of this run stops it too (in a container, SIGTERM
    reaches only PID 1), and kills it when it does not end in time."""
    stopped_at: float | None = None
    while True:
        try:
            child.wait(timeout=0.1)
            return
        except subprocess.TimeoutExpired:
            pass
        if not signals.stop_requested.is_set():
            continue
        if stopped_at is None:
            stopped_at = time.monotonic()
            child.send_signal(signal.SIGTERM)
        elif time.monotonic() - stopped_at > CHILD_STOP_SECONDS:
            child.kill()


def _environment(scratch: URL) -> dict[str, str]:
    """This process's environment, with every usual way of naming a database naming the
    scratch database instead."""
    environment = dict(os.environ)
    environment.pop("DATABASE_URL_FILE", None)  # it names the real database
    port = str(scratch.port or 5432)
    names = {
        "DATABASE_URL": scratch.render_as_string(hide_password=False),
        "DB_HOST": scratch.host,
        "DB_PORT": port,
        "DB_NAME": scratch.database,
        "DB_USER": scratch.username,
        "DB_PASSWORD": scratch.password,
        "PGHOST": scratch.host,
        "PGPORT": port,
        "PGDATABASE": scratch.database,
        "PGUSER": scratch.username,
        "PGPASSWORD": scratch.password,
    }
    for name, value in names.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = str(value)
    return environment


def child() -> None:
    """The child process: read the work, guard every connection, do it, write the outcome."""
    results = os.fdopen(int(sys.argv[1]), "wb")
    scratch, work, args, forbidden = pickle.load(sys.stdin.buffer)
    mask = Mask(scratch.passwords)
    setup_logging(scratch.log_format, scratch.log_level, mask, scratch.tenant)
    sys.stdout = MaskedStream(sys.stdout, mask)
    try:
        value = signals.run_interruptibly(lambda: _guarded(scratch, work, args, forbidden))
        outcome: tuple[Any, ...] = ("value", value)
    except MigratorError as error:
        outcome = ("error", type(error), str(error), error.exit_status)
    except Exception as error:  # a bug: still one line in the parent
        message = f"unexpected {type(error).__name__} in scratch work: {reason(error)}"
        outcome = ("error", MigratorError, message, 1)
    with results:
        pickle.dump(outcome, results)


def _guarded(
    scratch: Settings, work: Callable[..., Any], args: tuple[Any, ...], forbidden: Identity | None
) -> Any:
    expected = _scratch_identity(scratch)
    # Another database, whichever schema either connection is in.
    if forbidden is not None and replace(expected, schema=None).same_database(forbidden):
        raise UsageError(
            f"MIGRATOR_VERIFY_URL names {forbidden.database}, the database being migrated: "
            "scratch work needs a database of its own"
        )
    guard = Guard(expected)
    guard.install()
    try:
        if scratch.schema is not None:
            guard.expected = _make_schema(scratch)
        value = work(scratch, *args)
    except Exception:
        if guard.escaped is not None:
            raise guard.escaped from None
        raise
    if guard.escaped is not None:  # env.py caught the error and went on
        raise guard.escaped
    return value


def _make_schema(scratch: Settings) -> Identity:
    """MIGRATOR_SCHEMA's schema in the scratch database, made as the tenant's was made in the
    real one (the revisions, and Alembic's version table, go there through search_path);
    the scratch's identity in it, which every later connection must then match, as in the
    real run. Made on a guarded connection: only ever in the scratch database."""
    assert scratch.schema is not None
    engine = create_engine(scratch.connection_url(), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(CreateSchema(scratch.schema, if_not_exists=True))
        with engine.connect() as connection:
            return session_identity(connection)
    except DBAPIError as error:
        raise failure(error, f"creating schema {scratch.schema} in the scratch database") from None
    finally:
        engine.dispose()


def _scratch_identity(scratch: Settings) -> Identity:
    engine = create_engine(scratch.connection_url(), poolclass=NullPool)
    try:
        # The parent said the server is ready; the scratch database is on it.
        with wait.connect(engine, scratch.wait_timeout, announce=False) as connection:
            return session_identity(connection)
    finally:
        engine.dispose()
