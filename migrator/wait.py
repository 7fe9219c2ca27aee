"""Waiting for PostgreSQL: retry what time can fix, fail at once on what it cannot.

Every connection the run opens waits so, not only the first: env.py's own (made with an
engine of its own), one made after a session was lost. A busy server refuses a connection
for a moment (its slots are full, it is starting or shutting down), and that is no reason to
fail a deploy. Under the migration lock the wait is short: other runs queue behind the lock.

A refused connection costs well under a millisecond, so tries are frequent: the backoff is
full jitter capped at 0.1 s (bench/RESULTS.md has the readiness figures).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from tenacity import RetryCallState, retry_if_exception, wait_random_exponential

from migrator import retry, signals
from migrator.errors import DatabaseUnreachable, database_error, reason, refusal
from migrator.logs import log

T = TypeVar("T")
# How long a new connection may wait while this run holds the migration lock.
UNDER_LOCK_SECONDS = 5.0


class NotReady(Exception):
    """The server answers but cannot take the run yet (read-only: a standby, a failover)."""


@dataclass(frozen=True)
class Patience:
    """How long a new connection may wait for the database now, and why that long."""

    seconds: float
    under_lock: bool = False


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
        _own.connecting = True  # retried here: patient_connections leaves it alone
        try:
            connection = engine.connect()
        finally:
            _own.connecting = False
        try:
            if prepare is not None:
                prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    connection = _patiently(attempt, Patience(timeout), "waiting for the database")
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


@contextmanager
def patient_connections(
    patience: Callable[[], Patience], make_room: Callable[[Any], None]
) -> Iterator[None]:
    """While the block runs, every new connection any engine makes (env.py's own
    create_engine included) is retried as the run's first one is, for `patience()`, after
    `make_room(dialect)` (which may close a connection the run does not need meanwhile)."""

    def do_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        if getattr(_own, "connecting", False):
            return None  # connect() retries its own
        make_room(dialect)
        return _patiently(
            lambda: dialect.connect(*cargs, **cparams), patience(), "waiting for a connection"
        )

    event.listen(Engine, "do_connect", do_connect)
    try:
        yield
    finally:
        event.remove(Engine, "do_connect", do_connect)


def worth_waiting(error: BaseException) -> bool:
    """Whether time may fix it: a server that cannot take a connection yet, or not ready."""
    if isinstance(error, NotReady):
        return True
    return database_error(error) and refusal(error) is None


_own = threading.local()


def _patiently(attempt: Callable[[], T], patience: Patience, waiting: str) -> T:
    """`attempt()`, retried while worth waiting for `patience`; then the last error, as the
    failure it means (3 for an outage, its own status for a refusal)."""
    started = time.monotonic()

    def report(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        elapsed = time.monotonic() - started
        log.info("%s (%.0f of %g s): %s", waiting, elapsed, patience.seconds, reason(error))

    retrying = retry.retrying(
        retry=retry_if_exception(worth_waiting),
        wait=wait_random_exponential(multiplier=0.005, max=0.1),
        stop=retry.before_deadline(patience.seconds),
        before_sleep=retry.Throttled(report),
        reraise=True,
    )
    try:
        return retrying(attempt)
    except Exception as error:
        if signals.stop_requested.is_set():
            raise signals.interrupted(" while waiting for the database") from None
        if not worth_waiting(error):
            permanent = refusal(error) if database_error(error) else None
            if permanent is None:
                raise
            raise permanent from None
        held = (
            " while this run held the migration lock (released; nothing more ran)"
            if patience.under_lock
            else ""
        )
        state = "ready" if isinstance(error, NotReady) else "reachable"
        raise DatabaseUnreachable(
            f"database not {state} within {patience.seconds:g} s{held}: {reason(error)}"
        ) from None
