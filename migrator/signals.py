"""Stopping a run: SIGTERM and SIGINT, a lost migration lock, a deadline a stalled network
would overrun. Each stops the run at once, rolls back the revision in flight, and the run
exits within a bounded time even when the database no longer answers.

The work runs in a worker thread: a Python signal handler cannot run while the thread
that received the signal sits inside libpq waiting for a query (a long `UPDATE`, a lock
wait), so the main thread stays free to take the signal and cancel the queries in
flight. Tenacity's waits sleep on `stop_requested`, so a wait ends at once too.

What a stop concerns is one run's (`Stop`): each run has its own (`new_run`), so a second
run in one process (a test calling `cli.main` twice) starts clean. The handler is installed
first of all (`catch()`, the first line of `migrator`), before SQLAlchemy and Alembic are
imported: a signal during the imports is recorded, and the run that follows stops before
any database work. So this module imports the standard library
alone when it is loaded; SQLAlchemy and the errors are imported where they are used.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
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


class Stop:
    """One run's stop: whether and why it was asked to stop, the deadlines and watchers that
    may ask, and the connections a stop cancels. Each run has its own (`new_run`), so a
    second run in one process does not inherit the first's stop."""

    def __init__(self, signals_received: Sequence[int] = ()) -> None:
        self.requested = threading.Event()
        # Set when the worker was left stuck in a call that never returned (a stalled socket).
        self.abandoned = threading.Event()
        self.reasons: list[MigratorError] = []
        self.signals_received = list(signals_received)
        if self.signals_received:
            self.requested.set()
        self.deadlines: list[tuple[float, MigratorError]] = []
        self.watchers: list[Callable[[], MigratorError | None]] = []
        self.open_connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        # Since when each connection has had a command in flight (a statement, a COMMIT), as
        # seen every few tenths of a second: what watchers judge a stall by.
        self.in_flight: weakref.WeakKeyDictionary[Connection, float] = weakref.WeakKeyDictionary()

    def track_connection(self, connection: Connection) -> None:
        """SQLAlchemy's engine_connect hook: a connection the run's stop cancels."""
        self.open_connections.add(connection)

    def refuse_after_stop(
        self,
        connection: Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        *_: Any,
    ) -> None:
        """SQLAlchemy's before_cursor_execute hook: no new statement after a stop, but on a
        cleanup connection."""
        options = context.execution_options if context is not None else {}
        if self.requested.is_set() and not options.get("migrator_cleanup"):
            raise interrupted()


# The run going on. One at a time in a process (Alembic's `context` is process-wide): a
# module variable, not a context variable, so that every thread of the run (the worker, the
# lock's heartbeat) sees it without being handed it. Between runs, it records a signal that
# arrives while the program loads, for the next run to begin with.
_current = Stop()
_COMMAND_ACTIVE = 1  # libpq's PQTRANS_ACTIVE, in psycopg2's and psycopg 3's info


class _StopRequested:
    """`stop_requested`: the current run's stop flag, read as a threading.Event is read."""

    def is_set(self) -> bool:
        return _current.requested.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return _current.requested.wait(timeout)


stop_requested = _StopRequested()


def current() -> Stop:
    """The stop of the run going on (between runs: of the next one)."""
    return _current


@contextmanager
def new_run() -> Iterator[Stop]:
    """A stop of its own for the run in the block. A signal received before the block (while
    the program loaded) is the run's own: it stops before any work. After the block, the
    next run starts clean."""
    global _current
    run = Stop(_current.signals_received)
    _current = run
    try:
        yield run
    finally:
        _current = Stop()


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
    run = _current
    if not run.reasons:
        run.reasons.append(reason)
    run.requested.set()


def interrupted(detail: str = "") -> MigratorError:
    """Why the run was stopped: the first reason given, else the signal received."""
    from migrator.errors import Interrupted

    run = _current
    if run.reasons:
        return run.reasons[0]
    signal_number = run.signals_received[0] if run.signals_received else signal.SIGTERM
    name = signal.Signals(signal_number).name
    return Interrupted(f"interrupted by {name}{detail}", signal_number)


@contextmanager
def deadline(seconds: float, error: MigratorError) -> Iterator[None]:
    """Stop the run with `error` if the block is still running after `seconds`: a query
    stalled by the network would otherwise outlive the timeout that bounds the block."""
    entry = (time.monotonic() + seconds, error)
    deadlines = _current.deadlines
    deadlines.append(entry)
    try:
        yield
    finally:
        deadlines.remove(entry)


@contextmanager
def watching(check: Callable[[], MigratorError | None]) -> Iterator[None]:
    """While the block runs, `check()` every few tenths of a second; the run is stopped for
    the error it returns (a statement that got no answer for too long)."""
    watchers = _current.watchers
    watchers.append(check)
    try:
        yield
    finally:
        watchers.remove(check)


def longest_in_flight() -> float:
    """Seconds the oldest statement now in flight has waited for its answer."""
    now = time.monotonic()
    return max((now - sent for sent in list(_current.in_flight.values())), default=0.0)


def run_interruptibly(work: Callable[[], T]) -> T:
    """Run `work` in a worker thread; a stop cancels its queries and makes it raise. A stop
    requested before (a signal while the program was loading) means nothing is done."""
    from migrator.errors import MigratorError

    run = _current
    if run.requested.is_set():
        raise interrupted(" before the run began; nothing was done")
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the main thread, raised there
            outcome["error"] = error

    # A daemon: a worker stuck in a stalled socket must not keep the process alive.
    thread = threading.Thread(target=worker, name="migrator", daemon=True)
    with _engine_hooks(run), _signals_caught():
        thread.start()
        _watch(thread, run)
    if thread.is_alive():
        run.abandoned.set()
        error = interrupted()
        error.args = (
            f"{error}; the database did not answer within {STOP_GRACE_SECONDS:g} s, so the "
            "server rolls back the revision in flight when it drops the session",
        )
        raise error
    if "error" in outcome:
        raised = outcome["error"]
        if run.requested.is_set() and not isinstance(raised, MigratorError):
            raise interrupted() from raised
        raise raised
    return outcome["value"]  # type: ignore[no-any-return]


def _watch(thread: threading.Thread, run: Stop) -> None:
    """Until the worker ends: check the deadlines and watchers; after a stop, cancel the
    run's queries, and give up on the worker after the grace period."""
    stopped_at: float | None = None
    canceller: threading.Thread | None = None
    while thread.is_alive():
        thread.join(0.2)
        _check_deadlines(run)
        if not run.requested.is_set():
            continue
        stopped_at = stopped_at or time.monotonic()
        if time.monotonic() - stopped_at > STOP_GRACE_SECONDS:
            return
        # Again and again (a query may start just after a cancel went out), each round in a
        # thread of its own: a cancel request can block on a stalled network.
        if canceller is None or not canceller.is_alive():
            canceller = threading.Thread(target=_cancel_queries, args=(run,), daemon=True)
            canceller.start()


@contextmanager
def _engine_hooks(run: Stop) -> Iterator[None]:
    """While the block runs, every engine's connections (env.py's own too) are the run's to
    track and to cancel, and none runs a statement after a stop."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    hooks: dict[str, Callable[..., Any]] = {
        "engine_connect": run.track_connection,
        "before_cursor_execute": run.refuse_after_stop,
    }
    for name, hook in hooks.items():
        event.listen(Engine, name, hook)
    try:
        yield
    finally:
        for name, hook in hooks.items():
            event.remove(Engine, name, hook)


@contextmanager
def _signals_caught() -> Iterator[None]:
    """SIGTERM and SIGINT recorded while the block runs; the handlers before it after."""
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def cleanup_connection(engine: Engine) -> Iterator[Connection]:
    """A connection that still works after a stop was requested: for cleaning up."""
    with engine.connect().execution_options(migrator_cleanup=True) as connection:
        _current.open_connections.discard(connection)
        yield connection


def _on_signal(signal_number: int, frame: object) -> None:
    _current.signals_received.append(signal_number)
    _current.requested.set()


def _check_deadlines(run: Stop) -> None:
    now = time.monotonic()
    _note_commands_in_flight(run, now)
    for when, error in list(run.deadlines):
        if now >= when:
            stop(error)
    for check in list(run.watchers):
        found = check()
        if found is not None:
            stop(found)


def _note_commands_in_flight(run: Stop, now: float) -> None:
    for connection in list(run.open_connections):
        try:  # libpq's own state: a command sent and not yet answered
            status = connection.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            active = int(status) == _COMMAND_ACTIVE
        except Exception:  # closed, or never connected: nothing in flight
            active = False
        if not active:
            run.in_flight.pop(connection, None)
        elif connection not in run.in_flight:
            run.in_flight[connection] = now


def _cancel_queries(run: Stop) -> None:
    """Cancel what the run's sessions are doing, from a new connection of the same role.

    Not psycopg2's own cancel(): it holds the interpreter lock while it connects, so a server
    out of reach would freeze the whole process, signal handling included.
    """
    from sqlalchemy import text

    sessions: dict[Engine, list[int]] = {}
    for connection in list(run.open_connections):
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
    _current.requested.wait(seconds)
