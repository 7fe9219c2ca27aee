"""Waiting for PostgreSQL: retry what time can fix, fail at once on what it cannot.

A refused connection costs well under a millisecond, so tries are frequent: the backoff is
full jitter capped at 0.1 s (bench/RESULTS.md has the readiness figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from tenacity import RetryCallState, retry_if_exception, wait_random_exponential

from migrator import retry, signals
from migrator.errors import DatabaseUnreachable, reason, refusal
from migrator.logs import log


class NotReady(Exception):
    """The server answers but cannot take the run yet (read-only: a standby, a failover)."""


def connect(
    engine: Engine,
    timeout: float,
    prepare: Callable[[Connection], None] | None = None,
    *,
    announce: bool = True,
) -> Connection:
    """A connection, once the database accepts one and `prepare` accepts it (it may raise
    NotReady); raise at the timeout or at once on a permanent error."""
    started = time.monotonic()

    def attempt() -> Connection:
        connection = engine.connect()
        try:
            if prepare is not None:
                prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def report(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        elapsed = time.monotonic() - started
        log.info("waiting for the database (%.0f of %g s): %s", elapsed, timeout, reason(error))

    retrying = retry.retrying(
        retry=retry_if_exception(worth_waiting),
        wait=wait_random_exponential(multiplier=0.005, max=0.1),
        stop=retry.before_deadline(timeout),
        before_sleep=retry.Throttled(report),
        reraise=True,
    )
    try:
        connection = retrying(attempt)
    except (DBAPIError, NotReady) as error:
        if signals.stop_requested.is_set():
            raise signals.interrupted(" while waiting for the database") from None
        permanent = refusal(error) if isinstance(error, DBAPIError) else None
        if permanent is not None:
            raise permanent from None
        state = "ready" if isinstance(error, NotReady) else "reachable"
        raise DatabaseUnreachable(
            f"database not {state} within {timeout:g} s: {reason(error)}"
        ) from None
    if not announce:
        return connection
    version = ".".join(str(part) for part in connection.dialect.server_version_info or ())
    log.info(
        "database ready after %.2f s (PostgreSQL %s)",
        time.monotonic() - started,
        version,
        extra={"fields": {"event": "connected", "server_version": version}},
    )
    return connection


def worth_waiting(error: BaseException) -> bool:
    if isinstance(error, NotReady):
        return True
    return isinstance(error, DBAPIError) and refusal(error) is None
