"""One retry policy for every wait (the database, the migration lock, a table lock), composed
from tenacity's parts as tenacity composes its own: a stop that SIGTERM and SIGINT also
trigger, a sleep they end at once, a deadline that takes 0 for "one try", a throttled report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    stop_after_attempt,
    stop_before_delay,
    stop_when_event_set,
)
from tenacity.stop import stop_base

from migrator import signals

REPORT_EVERY_SECONDS = 5.0


def retrying(*, stop: stop_base, **policy: Any) -> Retrying:
    """tenacity's Retrying, stopped by a signal as well as by `stop`; its sleep (a given
    `sleep` must end when the run is asked to stop too) is woken by a signal. For the run
    going on (migrator.signals)."""
    policy.setdefault("sleep", signals.sleep)
    return Retrying(stop=stop | stop_when_event_set(signals.current().requested), **policy)


def before_deadline(seconds: float) -> stop_base:
    """Stop before the next try would start after `seconds`; 0 means one try."""
    return stop_before_delay(seconds) if seconds > 0 else stop_after_attempt(1)


class Throttled:
    """A `before_sleep` report made on the first retry, then once every few seconds."""

    def __init__(
        self, report: Callable[[RetryCallState], None], every: float = REPORT_EVERY_SECONDS
    ) -> None:
        self.report = report
        self.every = every
        self.last: float | None = None

    def __call__(self, state: RetryCallState) -> None:
        elapsed = state.seconds_since_start or 0.0
        if self.last is None or elapsed - self.last >= self.every:
            self.last = elapsed
            self.report(state)
