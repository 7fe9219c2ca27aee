"""SIGTERM and SIGINT: stop at once, roll back the revision in flight, release the lock.

The work runs in a worker thread: a Python signal handler cannot run while the thread
that received the signal sits inside libpq waiting for a query (a long `UPDATE`, a lock
wait), so the main thread stays free to take the signal and cancel the queries in
flight. Tenacity's waits sleep on `stop_requested`, so a wait ends at once too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import Pool

from migrator.errors import Interrupted

T = TypeVar("T")

stop_requested = threading.Event()
_signals_received: list[int] = []
_open_connections: weakref.WeakSet[Any] = weakref.WeakSet()


def interrupted(detail: str = "") -> Interrupted:
    signal_number = _signals_received[0] if _signals_received else signal.SIGTERM
    name = signal.Signals(signal_number).name
    return Interrupted(f"interrupted by {name}{detail}", signal_number)


def run_interruptibly(work: Callable[[], T]) -> T:
    """Run `work` in a worker thread; a signal cancels its queries and makes it raise."""
    outcome: dict[str, Any] = {}

    def worker() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the main thread, raised there
            outcome["error"] = error

    event.listen(Pool, "connect", _track_connection)
    event.listen(Engine, "before_cursor_execute", _refuse_after_stop)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=worker, name="migrator")
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
            if stop_requested.is_set():
                # Again and again: a query may start just after a cancel went out.
                _cancel_queries()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        event.remove(Pool, "connect", _track_connection)
        event.remove(Engine, "before_cursor_execute", _refuse_after_stop)
    if "error" in outcome:
        error = outcome["error"]
        if stop_requested.is_set() and not isinstance(error, Interrupted):
            raise interrupted() from error
        raise error
    return outcome["value"]  # type: ignore[no-any-return]


@contextmanager
def cleanup_connection(engine: Engine) -> Iterator[Connection]:
    """A connection that still works after a stop was requested: for cleaning up."""
    with engine.connect().execution_options(migrator_cleanup=True) as connection:
        _open_connections.discard(connection.connection.dbapi_connection)
        yield connection


def _on_signal(signal_number: int, frame: object) -> None:
    _signals_received.append(signal_number)
    stop_requested.set()


def _track_connection(dbapi_connection: Any, connection_record: Any) -> None:
    _open_connections.add(dbapi_connection)


def _refuse_after_stop(connection: Connection, *args: Any) -> None:
    if stop_requested.is_set() and not connection.get_execution_options().get("migrator_cleanup"):
        raise interrupted()


def _cancel_queries() -> None:
    for dbapi_connection in list(_open_connections):
        # Fails when the connection is closed or the driver cannot cancel: nothing in flight.
        with contextlib.suppress(Exception):
            dbapi_connection.cancel()  # psycopg2: safe from another thread


def sleep(seconds: float) -> None:
    """tenacity's sleep: ends at once when a signal asks us to stop."""
    stop_requested.wait(seconds)
