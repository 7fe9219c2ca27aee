"""One exception type per exit status, and the one place that decides what a database error
means; the CLI maps the exceptions to exit codes.
"""

from __future__ import annotations

import psycopg2
from psycopg2 import errorcodes


class MigratorError(Exception):
    """An expected failure: printed as one line, never with a traceback."""

    exit_status = 1
    status = "failed"


class MigrationFailed(MigratorError):
    """A revision failed; its transaction was rolled back."""

    exit_status = 1


class UsageError(MigratorError):
    """Bad arguments or configuration, or an unknown or ambiguous revision. Nothing was changed."""

    exit_status = 2
    status = "usage error"


class ProjectExited(MigratorError):
    """env.py (or a revision) called sys.exit: the run cannot say it finished."""

    exit_status = 2
    status = "usage error"


class DatabaseUnreachable(MigratorError):
    exit_status = 3
    status = "unreachable"


class LockTimeout(MigratorError):
    exit_status = 4
    status = "lock timeout"


class DifferenceFound(MigratorError):
    """`check` or `verify` found the database or the migrations not as they should be."""

    exit_status = 5
    status = "difference"


class AccessDenied(MigratorError):
    """The database refused the credentials or a permission."""

    exit_status = 6
    status = "access denied"


class LockLost(MigratorError):
    """The session holding the migration lock ended; the revision in flight was rolled back."""

    exit_status = 7
    status = "lock lost"


class SafetyRefused(MigratorError):
    """MIGRATOR_SAFETY=block: pending revisions have error-level findings; nothing ran."""

    exit_status = 8
    status = "refused by safety"


class FleetFailed(MigratorError):
    """Some targets of a fleet failed: the first failed target's exit status (file order)."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class Interrupted(MigratorError):
    """SIGTERM or SIGINT stopped the run; the revision in flight was rolled back."""

    status = "interrupted"

    def __init__(self, message: str, signal_number: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signal_number


# What a database error means. A failed connection carries no SQLSTATE (libpq reports it as
# text), so connection errors are read by libpq's message: every fragment must be present.
_ACCESS_CODES = {
    errorcodes.INSUFFICIENT_PRIVILEGE,
    errorcodes.INVALID_PASSWORD,
    errorcodes.INVALID_AUTHORIZATION_SPECIFICATION,
}
_REFUSALS: tuple[tuple[tuple[str, ...], type[MigratorError]], ...] = (
    (("password authentication failed",), AccessDenied),
    (("no pg_hba.conf entry",), AccessDenied),
    (("permission denied",), AccessDenied),
    (('role "', "does not exist"), AccessDenied),
    (("is not permitted to log in",), AccessDenied),
    # A typo in the database name waits for nothing: fail at once.
    (('database "', "does not exist"), UsageError),
    (("invalid connection option",), UsageError),
    (("invalid sslmode value",), UsageError),
    (("invalid integer value",), UsageError),
    # A pooler that refuses libpq `options` (PgBouncer without ignore_startup_parameters).
    (("unsupported startup parameter",), UsageError),
)
# The session is gone (terminated, idle timeout, server restart, network): nothing it held
# (the migration lock, an open transaction) survives it.
_LOST_CODES = {
    errorcodes.ADMIN_SHUTDOWN,
    errorcodes.CRASH_SHUTDOWN,
    "57P05",  # idle_session_timeout (PostgreSQL 14)
    errorcodes.IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
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
)


def refusal(error: BaseException) -> MigratorError | None:
    """The failure a connection attempt's error is for good, or None when waiting may help."""
    code = _sqlstate(error)
    text = reason(error)
    if code in _ACCESS_CODES:
        return AccessDenied(f"the database refused access: {text}")
    for fragments, error_type in _REFUSALS:
        if all(fragment in text for fragment in fragments):
            return error_type(f"the database refused the connection: {text}")
    if not _is_operational(error):
        return UsageError(f"cannot connect: {text}")
    return None


def connection_lost(error: BaseException) -> bool:
    """Whether the error says the session itself is gone, not only the statement."""
    if getattr(error, "connection_invalidated", False) is True:
        return True
    if _sqlstate(error) in _LOST_CODES:
        return True
    text = reason(error).lower()
    return _is_operational(error) and any(message in text for message in _LOST_MESSAGES)


def lock_not_available(error: BaseException) -> bool:
    """A statement gave up waiting for a table lock (lock_timeout)."""
    return bool(_sqlstate(error) == errorcodes.LOCK_NOT_AVAILABLE)


def missing_table(error: BaseException) -> bool:
    return bool(_sqlstate(error) == errorcodes.UNDEFINED_TABLE)


def failure(error: BaseException, what: str) -> MigratorError:
    """The failure a database error means once connected: `what` says what was being done."""
    code = _sqlstate(error)
    if code in _ACCESS_CODES:
        return AccessDenied(f"{what}: permission denied: {reason(error)}")
    if connection_lost(error):
        return DatabaseUnreachable(f"{what}: the connection was lost: {reason(error)}")
    return MigrationFailed(f"{what}: {reason(error)}")


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
    code = getattr(getattr(error, "orig", None), "pgcode", None)
    return code if isinstance(code, str) else None


def _is_operational(error: BaseException) -> bool:
    original = getattr(error, "orig", None) or error
    return isinstance(original, (psycopg2.OperationalError, psycopg2.InterfaceError))
