"""Stopping a run: SIGTERM and SIGINT, a lost migration lock, a deadline a stalled network
would overrun. Each stops the run at once, rolls back the revision in flight, and the run
exits within a bounded time even when the database no longer answers.

The work runs in a worker thread: a Python signal handler cannot run while the thread
that received the signal sits inside libpq waiting for a query (a long `UPDATE`, a lock
wait), so the main thread stays free to take the signal and cancel the queries in
flight. Tenacity's waits sleep on `stop_requested`, so a wait ends at once too.

The handler is installed first of all (`catch()`, the first line of `migrator`), before
SQLAlchemy and Alembic are imported: a signal during the imports is recorded, and the run
that follows stops before any database work. So this module imports the standard library
alone when it is loaded; SQLAlchemy and the errors are imported where they are used.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from migrator.errors import MigratorError

T = TypeVar("T")

# After a stop, how long the worker gets to roll back and release the lock. A cancel request
# that cannot reach a stalled server never returns; the process exits anyway, and the server
# rolls back what was in flight when it drops the session (keepalives, tcp_user_timeout).
STOP_GRACE_SECONDS = 8.0

stop_requested = threading.Event()
# Set when the worker was left stuck in a call that never returned (a stalled socket).
abandoned = threading.Event()
_reasons: list[MigratorError] = []
_signals_received: list[int] = []
_deadlines: list[tuple[float, MigratorError]] = []
_open_connections: weakref.WeakSet[Connection] = weakref.WeakSet()
# Since when each connection has had a command in flight (a statement, a COMMIT), as seen
# every few tenths of a second: what watchers judge a stall by.
_in_flight: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()
_COMMAND_ACTIVE = 1  # libpq's PQTRANS_ACTIVE, in psycopg2's and psycopg 3's info
_watchers: list[Callable[[], MigratorError | None]] = []


def catch() -> None:
    """Record SIGTERM and SIGINT from now on, in place of dying (SIGTERM) or raising
    KeyboardInterrupt (SIGINT) wherever the process is: the run reports them."""
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, _on_signal)


def ignore() -> None:
    """Ignore SIGTERM and SIGINT from now on (the run has reported how it ended)."""
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, signal.SIG_IGN)


def stop(reason: MigratorError) -> None:
    """Stop the run for `reason`, as a signal would; the first reason is the one reported."""
    if not _reasons:
        _reasons.append(reason)
    stop_requested.set()


def interrupted(detail: str = "") -> MigratorError:
    """Why the run was stopped: the first reason given, else the signal received."""
    from migrator.errors import Interrupted

    if _reasons:
        return _reasons[0]
    signal_number = _signals_received[0] if _signals_received else signal.SIGTERM
    name = signal.Signals(signal_number).name
    return Interrupted(f"interrupted by {name}{detail}", signal_number)


@contextmanager
def deadline(seconds: float, error: MigratorError) -> Iterator[None]:
    """Stop the run with `error` if the block is still running after `seconds`: a query
    stalled by the network would otherwise outlive the timeout that bounds the block."""
    entry = (time.monotonic() + seconds, error)
    _deadlines.append(entry)
    try:
        yield
    finally:
        _deadlines.remove(entry)


@contextmanager
def watching(check: Callable[[], MigratorError | None]) -> Iterator[None]:
    """While the block runs, `check()` every few tenths of a second; the run is stopped for
    the error it returns (a statement that got no answer for too long)."""
    _watchers.append(check)
    try:
        yield
    finally:
        _watchers.remove(check)


def longest_in_flight() -> float:
    """Seconds the oldest statement now in flight has waited for its answer."""
    now = time.monotonic()
    return max((now - sent for sent in list(_in_flight.values())), default=0.0)


def run_interruptibly(work: Callable[[], T]) -> T:
    """Run `work` in a worker thread; a stop cancels its queries and makes it raise. A stop
    requested before (a signal while the program was loading) means nothing is done."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from migrator.errors import MigratorError

    if stop_requested.is_set():
        raise interrupted(" before the run began; nothing was done")
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the main thread, raised there
            outcome["error"] = error

    event.listen(Engine, "engine_connect", _track_connection)
    event.listen(Engine, "before_cursor_execute", _refuse_after_stop)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # A daemon: a worker stuck in a stalled socket must not keep the process alive.
    thread = threading.Thread(target=worker, name="migrator", daemon=True)
    stopped_at: float | None = None
    canceller: threading.Thread | None = None
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
            _check_deadlines()
            if not stop_requested.is_set():
                continue
            stopped_at = stopped_at or time.monotonic()
            if time.monotonic() - stopped_at > STOP_GRACE_SECONDS:
                break
            # Again and again (a query may start just after a cancel went out), each round
            # in a thread of its own: a cancel request can block on a stalled network.
            if canceller is None or not canceller.is_alive():
                canceller = threading.Thread(target=_cancel_queries, daemon=True)
                canceller.start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        event.remove(Engine, "engine_connect", _track_connection)
        event.remove(Engine, "before_cursor_execute", _refuse_after_stop)
    if thread.is_alive():
        abandoned.set()
        error = interrupted()
        error.args = (
            f"{error}; the database did not answer within {STOP_GRACE_SECONDS:g} s, so the "
            "server rolls back the revision in flight when it drops the session",
        )
        raise error
    if "error" in outcome:
        raised = outcome["error"]
        if stop_requested.is_set() and not isinstance(raised, MigratorError):
            raise interrupted() from raised
        raise raised
    return outcome["value"]  # type: ignore[no-any-return]


@contextmanager
def cleanup_connection(engine: Engine) -> Iterator[Connection]:
    """A connection that still works after a stop was requested: for cleaning up."""
    with engine.connect().execution_options(migrator_cleanup=True) as connection:
        _open_connections.discard(connection)
        yield connection


def _on_signal(signal_number: int, frame: object) -> None:
    _signals_received.append(signal_number)
    stop_requested.set()


def _check_deadlines() -> None:
    now = time.monotonic()
    _note_commands_in_flight(now)
    for when, error in list(_deadlines):
        if now >= when:
            stop(error)
    for check in list(_watchers):
        found = check()
        if found is not None:
            stop(found)


def _note_commands_in_flight(now: float) -> None:
    for connection in list(_open_connections):
        try:  # libpq's own state: a command sent and not yet answered
            status = connection.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            active = int(status) == _COMMAND_ACTIVE
        except Exception:  # closed, or never connected: nothing in flight
            active = False
        if not active:
            _in_flight.pop(connection, None)
        elif connection not in _in_flight:
            _in_flight[connection] = now


def _track_connection(connection: Connection) -> None:
    _open_connections.add(connection)


def _refuse_after_stop(
    connection: Connection, cursor: Any, statement: str, parameters: Any, context: Any, *_: Any
) -> None:
    options = context.execution_options if context is not None else {}
    if stop_requested.is_set() and not options.get("migrator_cleanup"):
        raise interrupted()


def _cancel_queries() -> None:
    """Cancel what the run's sessions are doing, from a new connection of the same role.

    Not psycopg2's own cancel(): it holds the interpreter lock while it connects, so a server
    out of reach would freeze the whole process, signal handling included.
    """
    from sqlalchemy import text

    sessions: dict[Engine, list[int]] = {}
    for connection in list(_open_connections):
        with contextlib.suppress(Exception):  # closed or never connected: nothing in flight
            pid = connection.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            sessions.setdefault(connection.engine, []).append(pid)
    for engine, pids in sessions.items():
        with contextlib.suppress(Exception), cleanup_connection(engine) as canceller:
            canceller.execute(
                text("SELECT pg_cancel_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
                {"pids": pids},
            )


def sleep(seconds: float) -> None:
    """tenacity's sleep: ends at once when the run is asked to stop."""
    stop_requested.wait(seconds)
