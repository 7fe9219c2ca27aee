"""Running Alembic: the project's own Config, ScriptDirectory and env.py, driven as Alembic's
`command` module drives them, with each revision in a transaction of its own.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)

from migrator import signals
from migrator.config import Settings
from migrator.errors import AccessDenied, MigrationFailed, MigratorError, UsageError
from migrator.lock import table_lock_holders
from migrator.logs import Summary, log
from migrator.wait import reason

Direction = Literal["upgrade", "downgrade"]
LOCK_NOT_AVAILABLE = "55P03"
RELATIVE_TARGET = re.compile(r"[+-][0-9]+$")


@dataclass(frozen=True)
class State:
    """Where the database is, and what it would take to reach the target."""

    heads: tuple[str, ...]  # the database's revisions; () at base
    unknown: tuple[str, ...]  # those of them this project does not know
    steps: tuple[Script, ...]  # the revisions to run, in order


def alembic_project(settings: Settings) -> tuple[Config, ScriptDirectory]:
    config = Config(str(settings.alembic_ini), stdout=sys.stdout)
    # Read the file now, so `%(here)s` resolves; then hide its name, because a standard
    # env.py hands it to logging.config.fileConfig, which would replace our log handlers.
    config.get_main_option("script_location")
    config.config_file_name = None
    url = (
        settings.connection_url()
        if settings.database_url is not None
        else URL.create("postgresql+psycopg2")  # offline SQL needs only the dialect
    )
    # The URL reaches env.py through the Config, never a file; configparser needs % doubled.
    rendered = url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    try:
        script = ScriptDirectory.from_config(config)
        script.get_heads()  # loads every revision file now, so a broken one is a usage error
    except (CommandError, RevisionError) as error:
        raise UsageError(f"{settings.alembic_ini}: {error}") from None
    return config, script


def check_target(script: ScriptDirectory, target: str) -> None:
    """Fail before connecting when the target cannot name a revision of this project."""
    if RELATIVE_TARGET.search(target) or ":" in target:
        return  # relative and ranged targets depend on where the database is
    try:
        script.get_revisions(target)
    except (CommandError, RevisionError) as error:
        raise UsageError(describe_resolution_error(script, target, error)) from None


def inspect(config: Config, script: ScriptDirectory, direction: Direction, target: str) -> State:
    """Read the database's revisions through env.py and plan the way to `target`."""
    found: list[State] = []

    def record(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        found.append(_state(script, direction, target, heads)[0])
        return []

    run_env(config, script, record, dont_mutate=True)
    return found[0]


def _state(
    script: ScriptDirectory, direction: Direction, target: str, heads: tuple[str, ...]
) -> tuple[State, list[Any]]:
    """Where the database is, and Alembic's own steps to `target` from there."""
    unknown = tuple(head for head in heads if not _knows(script, head))
    planned = [] if unknown else _plan(script, direction, target, heads)
    return State(heads, unknown, tuple(step.revision for step in planned)), planned


def apply(
    config: Config,
    script: ScriptDirectory,
    direction: Direction,
    target: str,
    *,
    settings: Settings,
    lock_connection: Connection,
    summary: Summary,
    judge: Callable[[State], None],
) -> None:
    """Run the revisions to `target`, each committed on its own and logged as it completes.

    The database's revisions are read in the same env.py run, under the migration lock,
    and handed to `judge`, which may refuse them by raising.
    A revision that times out waiting for a table lock (55P03) was rolled back; after a
    backoff the run resumes from it, up to MIGRATOR_DDL_LOCK_RETRIES times.
    """

    def steps(heads: tuple[str, ...], context: MigrationContext) -> Iterator[Any]:
        state, planned = _state(script, direction, target, heads)
        judge(state)
        return progress.track(planned)

    def lock_timed_out(error: BaseException) -> bool:
        return (
            isinstance(error, DBAPIError)
            and getattr(error.orig, "pgcode", None) == LOCK_NOT_AVAILABLE
            and not signals.stop_requested.is_set()
        )

    def report_blocker(state: RetryCallState) -> None:
        log.warning(
            "%s timed out waiting for a table lock (MIGRATOR_DDL_LOCK_TIMEOUT); rolled back, "
            "retry %d of %d in %.1f s; blocked by %s",
            progress.describe(),
            state.attempt_number,
            settings.ddl_lock_retries,
            state.upcoming_sleep,
            table_lock_holders(lock_connection),
        )

    progress = _Progress(summary)
    retrying = Retrying(
        retry=retry_if_exception(lock_timed_out),
        wait=wait_random_exponential(multiplier=0.5, max=10),
        stop=stop_after_attempt(settings.ddl_lock_retries + 1)
        | stop_when_event_set(signals.stop_requested),
        sleep=signals.sleep,
        before_sleep=report_blocker,
        reraise=True,
    )
    try:
        retrying(
            run_env,
            config,
            script,
            steps,
            on_version_apply=progress.applied,
            destination_rev=target,
        )
    except MigratorError:
        raise
    except Exception as error:
        if signals.stop_requested.is_set():
            raise signals.interrupted(f"; {progress.describe()} rolled back") from error
        code = getattr(getattr(error, "orig", None), "pgcode", None)
        if code == LOCK_NOT_AVAILABLE:
            raise MigrationFailed(
                f"{progress.describe()} could not take its table lock after "
                f"{settings.ddl_lock_retries + 1} tries; rolled back; "
                f"blocked by {table_lock_holders(lock_connection)}"
            ) from error
        failure = AccessDenied if code == "42501" else MigrationFailed
        raise failure(
            f"{progress.describe()} failed and was rolled back: {reason(error)}"
        ) from error


def step(config: Config, script: ScriptDirectory, direction: Direction, target: str) -> None:
    """Upgrade or downgrade to `target` at once: no lock, no retries, nothing logged."""
    run_env(
        config,
        script,
        lambda heads, context: _plan(script, direction, target, heads),
        destination_rev=target,
    )


def write_sql(config: Config, script: ScriptDirectory, direction: Direction, target: str) -> None:
    """Offline mode: the SQL for the revisions to `target`, on stdout, no database needed.

    Offline there is no database to ask where it is: `FROM:TO` says, as with Alembic.
    """
    starting_rev, _, destination = target.rpartition(":")
    if direction == "downgrade" and not starting_rev:
        raise UsageError("downgrade --sql needs FROM:TO, for example head:base")
    run_env(
        config,
        script,
        lambda heads, context: _plan(script, direction, destination, heads),
        as_sql=True,
        starting_rev=starting_rev or None,
        destination_rev=destination,
    )


def describe_resolution_error(script: ScriptDirectory, target: str, error: Exception) -> str:
    heads = script.get_heads()
    if "ultiple head" in str(error):
        return (
            f"target {target!r} is ambiguous: the migrations have {len(heads)} heads "
            f"({', '.join(heads)}); name one of them, or 'heads' for all"
        )
    return f"target {target!r}: {error}"


def _knows(script: ScriptDirectory, revision: str) -> bool:
    try:
        script.get_revision(revision)
    except (CommandError, RevisionError):
        return False
    return True


def _environment(
    config: Config,
    script: ScriptDirectory,
    on_version_apply: Callable[..., None] | None,
    **options: Any,
) -> EnvironmentContext:
    """Alembic's EnvironmentContext, with our defaults under whatever env.py configures."""
    environment = EnvironmentContext(config, script, **options)
    configure_as_asked = environment.configure

    def configure(**asked: Any) -> None:
        # Each revision commits on its own (env.py may still say otherwise), so a
        # failure leaves the last good revision in place and a rerun resumes.
        asked.setdefault("transaction_per_migration", True)
        if on_version_apply is not None:
            asked["on_version_apply"] = [*(asked.get("on_version_apply") or ()), on_version_apply]
        configure_as_asked(**asked)

    # env.py reaches the instance through the `alembic.context` proxy, which looks its
    # methods up on the instance: overriding `configure` here is seen by any env.py.
    environment.configure = configure  # type: ignore[method-assign,assignment]
    return environment


def run_env(
    config: Config,
    script: ScriptDirectory,
    steps: Callable[[tuple[str, ...], MigrationContext], Iterable[Any]],
    *,
    on_version_apply: Callable[..., None] | None = None,
    **options: Any,
) -> None:
    connection = config.attributes.get("connection")
    if connection is not None and connection.in_transaction():
        # Alembic commits nothing on a connection that is already in a transaction.
        connection.rollback()
    with _environment(config, script, on_version_apply, fn=steps, **options):
        script.run_env()


def _plan(
    script: ScriptDirectory, direction: Direction, target: str, heads: tuple[str, ...]
) -> list[Any]:
    # The same calls Alembic's command.upgrade and command.downgrade make: the only way
    # to get exactly the steps Alembic will run, branches and relative targets included.
    try:
        current: Any = heads  # Alembic's own commands pass the heads tuple, whatever its hints say
        if direction == "upgrade":
            return list(script._upgrade_revs(target, current))
        return list(script._downgrade_revs(target, current))
    except (CommandError, RevisionError) as error:
        raise UsageError(describe_resolution_error(script, target, error)) from None


class _Progress:
    """Numbers and times each revision as Alembic pulls it, logs it as it completes."""

    def __init__(self, summary: Summary) -> None:
        self.total = 0
        self.summary = summary
        self.current: Script | None = None
        self.started = time.monotonic()

    def track(self, steps: list[Any]) -> Iterator[Any]:
        # A retry plans again from where the last try stopped.
        self.total = self.summary.applied + len(steps)
        for step in steps:
            self.current = step.revision
            self.started = time.monotonic()
            if log.isEnabledFor(logging.DEBUG):  # describe() reads the docstring: not for free
                log.debug("%s started", self.describe())
            yield step

    def applied(self, *, step: MigrationInfo, heads: set[str], **_: Any) -> None:
        seconds = time.monotonic() - self.started
        described = self.describe()
        self.summary.applied += 1
        self.summary.to_revision = ",".join(sorted(heads)) or "base"
        log.info(
            "%s %s in %.2f s",
            described,
            "applied" if step.is_upgrade else "reverted",
            seconds,
            extra={
                "fields": {
                    "event": "revision",
                    "position": self.summary.applied,
                    "total": self.total,
                    "revision": step.up_revision_id,
                    "direction": "upgrade" if step.is_upgrade else "downgrade",
                    "seconds": round(seconds, 3),
                }
            },
        )
        self.current = None

    def describe(self) -> str:
        if self.current is None:
            return "the migration"
        position = self.summary.applied + 1
        return f"[{position}/{self.total}] {self.current.revision} ({self.current.doc})"
