"""One run: one command for one set of Settings, from its start to its summary.

The CLI calls `run_one` with the settings and command it read from the arguments and the
environment; a fleet's target process calls it with the target's settings. Everything the
run changes in the process is held for the run alone and put back after it (`_in_place`):
its stop (migrator.signals), stdout masked, the working directory. So `cli.main` can run
twice in one process, and a test can call it in-process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from migrator import signals
from migrator.config import Settings
from migrator.errors import MigratorError, UsageError, reason
from migrator.logs import MaskedStream, log, report_summary, setup_logging
from migrator.masking import Mask
from migrator.summary import Summary


@dataclass(frozen=True)
class Command:
    """A command to run: `function(settings, summary, **options)`, one of migrator.commands,
    and its name as the summary gives it (upgrade, fleet-upgrade ...)."""

    name: str
    function: Callable[..., None]
    options: dict[str, Any] = field(default_factory=dict)


def run_one(settings: Settings, command: Command) -> Summary:
    """Run `command` with `settings`, stoppable (SIGTERM, SIGINT, a lost lock); its summary
    reported (log, termination message, MIGRATOR_SUMMARY_FILE) and returned, with the exit
    status. A usage error found on the way is its one line alone: nothing was done."""
    mask = Mask(settings.passwords)
    setup_logging(settings.log_format, settings.log_level, mask, settings.tenant)
    summary = Summary(command=command.name)
    debug = settings.log_level == "DEBUG"
    with _in_place(settings, mask) as stop:
        try:
            signals.run_interruptibly(
                lambda: command.function(settings, summary, **command.options)
            )
        except MigratorError as error:
            log.error("%s", error, exc_info=debug)
            summary.status, summary.exit_status = error.status, error.exit_status
            if isinstance(error, UsageError):
                return summary  # nothing was done: the one line says it all
        except Exception as error:  # a bug or something unforeseen: still one line, masked
            log.error("unexpected %s: %s", type(error).__name__, reason(error), exc_info=debug)
            summary.status, summary.exit_status = "failed", 1
        report_summary(summary, mask, settings.termination_log, settings.summary_file)
        if stop.abandoned.is_set():
            # The worker holds a driver lock inside a stalled socket: a normal interpreter
            # exit would wait on it when closing connections. Leave now; the server cleans up.
            logging.shutdown()
            os._exit(summary.exit_status)
    return summary


@contextlib.contextmanager
def _in_place(settings: Settings, mask: Mask) -> Iterator[signals.Stop]:
    """What the run changes in the process, for the block alone: a stop of its own, stdout
    masked (the commands' output and Alembic's), and the working directory beside
    alembic.ini, where its relative paths (prepend_sys_path, script_location) mean what they
    mean to `alembic` run there."""
    with (
        signals.new_run() as stop,
        contextlib.redirect_stdout(MaskedStream(sys.stdout, mask)),
        contextlib.chdir(settings.alembic_ini.parent),
    ):
        yield stop
