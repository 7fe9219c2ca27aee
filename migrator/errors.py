"""One exception type per exit status, and the one place that decides what a database error
means; the CLI maps the exceptions to exit codes.

Each type also says whether its status is permanent: a rerun of the same release on the same
database fails the same way, so the Helm chart's podFailurePolicy fails the Job at once on it
rather than retrying (tests/test_helm_chart.py checks the chart and the docs against
`permanent_exit_statuses()`).
"""

from __future__ import annotations

import functools
import json
import re
import signal
import sysconfig
import traceback
from importlib import resources
from pathlib import Path


class MigratorError(Exception):
    """An expected failure: printed as one line, never with a traceback."""

    exit_status = 1
    status = "failed"
    permanent = False  # a retry may succeed (an outage, a lock, a revision's own failure)


class MigrationFailed(MigratorError):
    """A revision failed; its transaction was rolled back."""

    exit_status = 1


class UsageError(MigratorError):
    """Bad arguments or configuration, or an unknown or ambiguous revision. Nothing was changed."""

    exit_status = 2
    status = "usage error"
    permanent = True


class ProjectExited(MigratorError):
    """env.py (or a revision) called sys.exit: the run cannot say it finished."""

    exit_status = 2
    status = "usage error"
    permanent = True


class DatabaseUnreachable(MigratorError):
    exit_status = 3
    status = "unreachable"


class ConnectionLost(DatabaseUnreachable):
    """A session ended (a restart, a terminated session, a network) where nothing this run
    did was lost with it: the work in flight, if any, was rolled back by the server."""

    status = "connection lost"


class LockTimeout(MigratorError):
    exit_status = 4
    status = "lock timeout"


class DifferenceFound(MigratorError):
    """`check` or `verify` found the database or the migrations not as they should be."""

    exit_status = 5
    status = "difference"
    permanent = True


class AccessDenied(MigratorError):
    """The database refused the credentials or a permission, or the migrator's user cannot
    read a project file (project_files.py)."""

    exit_status = 6
    status = "access denied"
    permanent = True


class LockLost(MigratorError):
    """The session holding the migration lock ended; the revision in flight was rolled back."""

    exit_status = 7
    status = "lock lost"


class SafetyRefused(MigratorError):
    """MIGRATOR_SAFETY=block: pending revisions have error-level findings; nothing ran."""

    exit_status = 8
    status = "refused by safety"
    permanent = True


class FleetFailed(MigratorError):
    """Some targets of a fleet failed: the first failed target's exit status (file order)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Interrupted(MigratorError):
    """SIGTERM or SIGINT stopped the run; the revision in flight was rolled back."""

    status = "interrupted"
    # What a stopped run's process exits with: 128 + the signal that stopped it, or 137 when
    # it was killed (SIGKILL) for not stopping in time.
    EXIT_STATUSES = (128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGKILL)

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signal_number


def permanent_exit_statuses() -> list[int]:
    """The exit statuses a retry cannot change, from the exception types that say so."""
    found: set[int] = set()
    kinds: list[type[MigratorError]] = [MigratorError]
    while kinds:
        kind = kinds.pop()
        kinds += kind.__subclasses__()
        if kind.permanent:
            found.add(kind.exit_status)
    return sorted(found)


# What a database error means, by SQLSTATE wherever the driver has one (psycopg2's `pgcode`,
# psycopg 3's `sqlstate`): the same in every language the server speaks.
_ACCESS_CODES = {"42501", "28P01", "28000"}  # insufficient privilege, invalid password or role
# A refused connection, read from its text: what fixes an access refusal (True), or another.
_REFUSAL_FIXES = {
    True: "check the user and password of DATABASE_URL (or DB_USER, DB_PASSWORD), and that "
    "the role may log in and connect (GRANT CONNECT ON DATABASE ... TO the role)",
    False: "check the database name and options of DATABASE_URL (or DB_NAME)",
}
# What fixes each: the grant, or the setting.
_ACCESS_FIXES = {
    "42501": "grant the role that privilege (the message names the object: GRANT ... TO the "
    "role; CONNECT ON DATABASE to connect), or run as a role that has it",
    "28P01": "check the user and password of DATABASE_URL (or DB_USER and DB_PASSWORD, "
    "DB_PASSWORD_FILE)",
    "28000": "the server has no pg_hba.conf entry for this role, host and database, or no such "
    "role: check DATABASE_URL's user (or DB_USER), or the server's pg_hba.conf",
}
# The session is gone (terminated, idle timeout, server restart, network): nothing it held
# (the migration lock, an open transaction) survives it.
_LOST_CODES = {
    "57P01",  # admin_shutdown: pg_terminate_backend, a fast shutdown
    "57P02",  # crash_shutdown
    "57P05",  # idle_session_timeout (PostgreSQL 14)
    "25P03",  # idle_in_transaction_session_timeout
    "08000",  # connection_exception
    "08003",  # connection_does_not_exist
    "08006",  # connection_failure
    "08P01",  # protocol_violation: PgBouncer's "server conn crashed?"
}
_LOST_MESSAGES = (
    "server closed the connection unexpectedly",
    "terminating connection",
    "connection already closed",
    "connection timed out",
    "could not receive data from server",
    "could not send data to server",
    "ssl syscall error",
    "eof detected",
    "no connection to the server",
    "the connection is closed",  # psycopg 3
    "the connection is lost",  # psycopg 3
    "consuming input failed",  # psycopg 3
    "connection socket closed",  # psycopg 3
    "server conn crashed",  # PgBouncer, when its server connection ended
    "results from command",  # psycopg 3: a FATAL error (a restart) after the command's own
)


@functools.cache
def _connection_refusals() -> tuple[tuple[re.Pattern[str], type[MigratorError]], ...]:
    """A failed connection carries no SQLSTATE (libpq keeps none, in either driver): what
    failed for good is read from its message, in every language PostgreSQL's own catalogs
    translate it to (server_messages.json, made by scripts/server-messages.py)."""
    document = json.loads(
        resources.files("migrator").joinpath("server_messages.json").read_text("utf-8")
    )
    # PgBouncer's own refusal of libpq `options` (it has no translations) is one more.
    document["usage"].append("unsupported startup parameter: %s")
    meanings: dict[str, type[MigratorError]] = {"access": AccessDenied, "usage": UsageError}
    return tuple(
        (re.compile(".*".join(re.escape(part) for part in template.split("%s"))), meaning)
        for name, meaning in meanings.items()
        for template in document[name]
    )


def refusal(error: BaseException) -> MigratorError | None:
    """The failure a connection attempt's error is for good, or None when waiting may help."""
    code = _sqlstate(error)
    text = reason(error)
    if code in _ACCESS_CODES:
        return AccessDenied(f"the database refused access: {text}; {_ACCESS_FIXES[code]}")
    for pattern, error_type in _connection_refusals():
        if pattern.search(text):
            fix = _REFUSAL_FIXES[error_type is AccessDenied]
            return error_type(f"the database refused the connection: {text}; {fix}")
    if not _is_operational(error) and not connection_lost(error):
        return UsageError(f"cannot connect: {text}")
    return None


def connection_lost(error: BaseException) -> bool:
    """Whether the error says the session itself is gone, not only the statement."""
    if getattr(error, "connection_invalidated", False) is True:
        return True
    if _sqlstate(error) in _LOST_CODES:
        return True
    text = reason(error).lower()
    kinds = {"OperationalError", "InterfaceError", "InternalError"}
    return _is_a(error, kinds) and any(message in text for message in _LOST_MESSAGES)


def lock_not_available(error: BaseException) -> bool:
    """A statement gave up waiting for a table lock (lock_timeout)."""
    return _sqlstate(error) == "55P03"


def missing_table(error: BaseException) -> bool:
    return _sqlstate(error) == "42P01"


def permission_denied(error: BaseException) -> bool:
    """The role may not do this (insufficient_privilege), an error after connecting."""
    return _sqlstate(error) == "42501"


def failure(error: BaseException, what: str) -> MigratorError:
    """The failure a database error means once connected: `what` says what was being done."""
    code = _sqlstate(error)
    if code in _ACCESS_CODES:
        return AccessDenied(f"{what}: permission denied: {reason(error)}; {_ACCESS_FIXES[code]}")
    if code == "57014" and not connection_lost(error):  # query_canceled: statement_timeout
        return MigrationFailed(
            f"{what}: {failure_detail(error)}; MIGRATOR_STATEMENT_TIMEOUT (statement_timeout) "
            "ends a statement that runs longer: raise it, or unset it, if this one needs longer"
        )
    if connection_lost(error):
        return ConnectionLost(f"{what}: the connection was lost: {reason(error)}")
    return MigrationFailed(f"{what}: {failure_detail(error)}")


def failure_detail(error: BaseException) -> str:
    """What failed, on one line: the database's own message for a database error; for an
    exception raised by the project's code, where and what (`project_fault`)."""
    if getattr(error, "orig", None) is not None:
        return reason(error)
    return project_fault(error) or f"{type(error).__name__}: {reason(error)}"


def project_fault(error: BaseException) -> str | None:
    """`FILE:LINE: Type: message` when `error` was raised by the project's own code (env.py,
    a revision, a module they import), None when by the migrator's (a bug of ours).

    Read from the traceback, innermost frame first: library frames (the standard library,
    installed packages: Alembic, SQLAlchemy) are passed over; the first other frame says
    whose code raised. A SyntaxError names its own file and line."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{error.filename}:{error.lineno}: SyntaxError: {error.msg}"
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
            continue
        path = Path(frame.filename).resolve()
        if path.is_relative_to(_MIGRATOR_DIRECTORY):  # first: it may be an installed package
            return None
        if any(path.is_relative_to(directory) for directory in _LIBRARY_DIRECTORIES):
            continue
        return f"{frame.filename}:{frame.lineno}: {type(error).__name__}: {reason(error)}"
    return None


def project_source(filename: str) -> bool:
    """Whether a file is the project's own code: not the migrator's, the standard library's
    or an installed package's."""
    path = Path(filename).resolve()
    return not path.is_relative_to(_MIGRATOR_DIRECTORY) and not any(
        path.is_relative_to(directory) for directory in _LIBRARY_DIRECTORIES
    )


_MIGRATOR_DIRECTORY = Path(__file__).resolve().parent
_LIBRARY_DIRECTORIES = {
    Path(sysconfig.get_path(name)).resolve()
    for name in ("stdlib", "platstdlib", "purelib", "platlib")
}


def underlying(error: BaseException) -> BaseException:
    """The database's own error behind `error`, when it has one: SQLAlchemy may raise a
    follow-up error (a transaction to roll back first) from the one that says what happened."""
    seen: BaseException | None = error
    while seen is not None:
        if getattr(seen, "orig", None) is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return error


def reason(error: BaseException | None) -> str:
    """The driver's own message on one line, without SQLAlchemy's boilerplate."""
    original = getattr(error, "orig", None) or error
    return " ".join(str(original).split()) or type(original).__name__


def _sqlstate(error: BaseException) -> str | None:
    original = getattr(error, "orig", None) or error
    code = getattr(original, "pgcode", None) or getattr(original, "sqlstate", None)
    return code if isinstance(code, str) else None


def database_error(error: BaseException) -> bool:
    """An error of the driver's (SQLAlchemy's wrapper of one, or the driver's own as a
    connection attempt raises it), read by attribute so that neither driver need be installed."""
    original = getattr(error, "orig", None) or error
    return hasattr(original, "pgcode") or hasattr(original, "sqlstate")


def _is_operational(error: BaseException) -> bool:
    """The driver's OperationalError or InterfaceError (psycopg2's or psycopg 3's)."""
    return _is_a(error, {"OperationalError", "InterfaceError"})


def _is_a(error: BaseException, kinds: set[str]) -> bool:
    """Whether the driver's error is of one of these kinds, read by name so that neither
    driver need be installed."""
    original = getattr(error, "orig", None) or error
    return bool({kind.__name__ for kind in type(original).__mro__} & kinds)
