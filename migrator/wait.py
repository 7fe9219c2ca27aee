"""Waiting for PostgreSQL: retry what time can fix, fail at once on what it cannot.

Every connection the run opens waits so, not only the first: env.py's own (made with an
engine of its own), one made after a session was lost. A busy server refuses a connection
for a moment (its slots are full, it is starting or shutting down), and that is no reason to
fail a deploy. Under the migration lock the wait is short: other runs queue behind the lock.

A refused connection costs well under a millisecond, so tries are frequent: the backoff is
full jitter capped at 0.1 s (bench/RESULTS.md has the readiness figures).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from tenacity import RetryCallState, retry_if_exception, wait_random_exponential

from migrator import logs, retry, signals
from migrator.errors import DatabaseUnreachable, MigratorError, database_error, reason, refusal
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
    setting: str | None = "MIGRATOR_WAIT_TIMEOUT"  # the one that says how long, if any


def connect(
    engine: Engine,
    timeout: float,
    prepare: Callable[[Connection], None] | None = None,
    *,
    announce: bool = True,
    setting: str | None = "MIGRATOR_WAIT_TIMEOUT",
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

    connection = _patiently(
        attempt,
        Patience(timeout, setting=setting),
        "waiting for the database",
        first_line=_first_wait_line,
    )
    if not announce:
        return connection
    version = ".".join(str(part) for part in connection.dialect.server_version_info or ())
    logs.database_ready(time.monotonic() - started, version)
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


def _first_wait_line(error: BaseException | None) -> str | None:
    """The first line of the wait for a server that does not take connections yet (one that
    is starting reads as that, not as an error); None for a read-only one (said as is)."""
    if isinstance(error, NotReady):
        return None
    return f"waiting for the database (not accepting connections yet): {short_reason(error)}"


# The driver's framing around the server's own words: where it tried, its hint, its prefixes.
_WHERE = re.compile(
    r'connection to server (?:at "[^"]*"(?: \([^)]*\))?, port \d+|on socket "(?P<socket>[^"]*)")'
    r" failed: "
)
_HINT = re.compile(r"\s*Is the server running (?:on that host|locally) and accepting[^?]*\?")
_PREFIX = re.compile(r"^(?:connection failed: |connection is bad: |FATAL: )+")


def short_reason(error: BaseException | None) -> str:
    """The driver's message without where it tried (the "connecting to" line said so) and
    without its hint: `connection refused`, `the database system is starting up`."""
    text = reason(error)
    # psycopg 3 after trying several addresses: the last failure, then all of them.
    text = text.split(" Multiple connection attempts failed.")[0]
    where = _WHERE.search(text)
    text = _PREFIX.sub("", _HINT.sub("", _WHERE.sub("", text))).strip()
    socket = where.group("socket") if where else None
    if socket and text == "No such file or directory":
        return f"no server socket {socket} yet"
    if re.match(r"[A-Z][a-z]", text):  # "Connection refused", not "FATAL" or a name
        text = text[0].lower() + text[1:]
    return text or reason(error)


def _patiently(
    attempt: Callable[[], T],
    patience: Patience,
    waiting: str,
    *,
    first_line: Callable[[BaseException | None], str | None] = lambda error: None,
) -> T:
    """`attempt()`, retried while worth waiting for `patience`; then the last error, as the
    failure it means (3 for an outage, its own status for a refusal). The first report is
    `first_line(error)` when that gives one; later ones say how long so far, and the full
    reason."""
    started = time.monotonic()
    reported = False

    def report(state: RetryCallState) -> None:
        nonlocal reported
        error = state.outcome.exception() if state.outcome else None
        elapsed = time.monotonic() - started
        first = None if reported else first_line(error)
        reported = True
        if first is not None:
            log.info("%s", first)
        else:
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
        failure = _gave_up(error, patience)
        if failure is None:
            raise
        raise failure from None


def _gave_up(error: Exception, patience: Patience) -> MigratorError | None:
    """What the last error of a wait means: interrupted by a stop; a refusal's own failure;
    an outage (3) when time might still have fixed it; None: the error as it is."""
    if signals.stop_requested.is_set():
        return signals.interrupted(" while waiting for the database")
    if not worth_waiting(error):
        return refusal(error) if database_error(error) else None
    held = (
        " while this run held the migration lock (released; nothing more ran)"
        if patience.under_lock
        else ""
    )
    state = "ready" if isinstance(error, NotReady) else "reachable"
    named = f" ({patience.setting})" if patience.setting and not patience.under_lock else ""
    return DatabaseUnreachable(
        f"database not {state} within {patience.seconds:g} s{named}{held}: {reason(error)}"
    )
