"""Waiting for PostgreSQL: retry what time can fix, fail at once on what it cannot.

A refused connection costs well under a millisecond, so tries are frequent: the backoff is
full jitter capped at 0.1 s, and a database that becomes ready is noticed about 0.06 s later
(median, bench/RESULTS.md). A 0.2 s cap gave medians up to 0.095 s.
"""

from __future__ import annotations

import time

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    stop_when_event_set,
    wait_random_exponential,
)

from migrator import signals
from migrator.errors import AccessDenied, DatabaseUnreachable, MigratorError, UsageError
from migrator.logs import log

# A failed connection carries no SQLSTATE (libpq reports it as text), so the decision
# reads libpq's message: every fragment of an entry must be present. Anything not listed
# here (refused, reset, DNS not yet resolvable, starting up, too many clients) is transient.
_PERMANENT_MESSAGES: tuple[tuple[tuple[str, ...], type[MigratorError]], ...] = (
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
)

REPORT_EVERY_SECONDS = 5.0


def connect(engine: Engine, timeout: float) -> Connection:
    """A connection, once the database accepts one; raise at the timeout or a permanent error."""
    started = time.monotonic()
    last_report = [-REPORT_EVERY_SECONDS]

    def report(state: RetryCallState) -> None:
        elapsed = time.monotonic() - started
        if elapsed - last_report[0] >= REPORT_EVERY_SECONDS:
            last_report[0] = elapsed
            error = state.outcome.exception() if state.outcome else None
            log.info("waiting for the database (%.0f of %g s): %s", elapsed, timeout, reason(error))

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.005, max=0.1),
        stop=(stop_before_delay(timeout) if timeout > 0 else stop_after_attempt(1))
        | stop_when_event_set(signals.stop_requested),
        sleep=signals.sleep,
        before_sleep=report,
        reraise=True,
    )
    try:
        connection = retrying(engine.connect)
    except DBAPIError as error:
        if signals.stop_requested.is_set():
            raise signals.interrupted(" while waiting for the database") from None
        permanent = permanent_error(error)
        if permanent is not None:
            raise permanent from None
        raise DatabaseUnreachable(
            f"database not reachable within {timeout:g} s: {reason(error)}"
        ) from None
    version = ".".join(str(part) for part in connection.dialect.server_version_info or ())
    log.info(
        "database ready after %.2f s (PostgreSQL %s)",
        time.monotonic() - started,
        version,
        extra={"fields": {"event": "connected", "server_version": version}},
    )
    return connection


def is_transient(error: BaseException) -> bool:
    return isinstance(error, OperationalError) and permanent_error(error) is None


def permanent_error(error: DBAPIError) -> MigratorError | None:
    """The error to fail with at once, or None when waiting may help."""
    if getattr(error.orig, "pgcode", None) in ("28P01", "28000", "42501"):
        return AccessDenied(f"the database refused access: {reason(error)}")
    text = reason(error)
    for fragments, error_type in _PERMANENT_MESSAGES:
        if all(fragment in text for fragment in fragments):
            return error_type(f"the database refused the connection: {text}")
    if not isinstance(error, OperationalError):
        return UsageError(f"cannot connect: {text}")
    return None


def reason(error: BaseException | None) -> str:
    """The driver's own message on one line, without SQLAlchemy's boilerplate."""
    original = getattr(error, "orig", None) or error
    return " ".join(str(original).split()) or type(original).__name__
