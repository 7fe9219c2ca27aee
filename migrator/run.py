"""Running Alembic: the project's own Config, ScriptDirectory and env.py, driven as Alembic's
`command` module drives them, with each revision in a transaction of its own.
"""

from __future__ import annotations

import configparser
import io
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import MultipleHeads, RevisionError
from alembic.util import CommandError
from alembic.util.pyfiles import pyc_file_from_path
from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import TextClause
from tenacity import (
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from migrator import catalog, errors, ledger, project_files, retry, signals
from migrator.config import Settings
from migrator.errors import (
    ConnectionLost,
    LockLost,
    MigrationFailed,
    MigratorError,
    ProjectExited,
    UsageError,
    connection_lost,
    lock_not_available,
    reason,
)
from migrator.lock import MigrationLock, table_lock_holders, table_locks
from migrator.logs import log
from migrator.scratch import Identity, session_identity
from migrator.summary import Summary

Direction = Literal["upgrade", "downgrade"]
# How often a revision that timed out on a table lock looks whether the holders are gone.
RELEASE_POLL_SECONDS = 0.1
RELATIVE_TARGET = re.compile(r"[+-][0-9]+$")
# The key under which a command puts, in the Alembic config's attributes, the identity of the
# database its session reached (migrator.scratch.Identity).
IDENTITY = "migrator.identity"
_OID_OF = text("SELECT coalesce(to_regclass(:name)::oid, 0)")


@dataclass(frozen=True)
class State:
    """Where the database is, and what it would take to reach the target."""

    heads: tuple[str, ...]  # the database's revisions; () at base
    unknown: tuple[str, ...]  # those of them this project does not know
    steps: tuple[Script, ...]  # the revisions to run, in order
    version_table: tuple[str, str | None] | None = None  # where env.py keeps them: name, schema


def alembic_project(settings: Settings) -> tuple[Config, ScriptDirectory]:
    """The project's Config and ScriptDirectory; a broken project file is a usage error
    that names the file, one the migrator's user cannot read an access error that names it."""
    try:
        config = _config(settings)
        script = _script_directory(config, settings)
    except PermissionError as error:
        raise project_files.unreadable(error) from None
    return config, script


def _config(settings: Settings) -> Config:
    # configparser skips a file it cannot open: without this, "no [alembic] section".
    project_files.require_readable([settings.alembic_ini])
    config = Config(str(settings.alembic_ini), stdout=sys.stdout)
    # Read the file now, so `%(here)s` resolves; then hide its name, because a standard
    # env.py hands it to logging.config.fileConfig, which would replace our log handlers.
    try:
        config.get_main_option("script_location")
    except (CommandError, configparser.Error, UnicodeDecodeError) as error:
        problem = "not UTF-8 text" if isinstance(error, UnicodeDecodeError) else error
        raise UsageError(f"{settings.alembic_ini}: {problem}") from None
    config.config_file_name = None
    url = (
        settings.connection_url()
        if settings.database_url is not None
        else URL.create("postgresql")  # offline SQL needs only the dialect
    )
    # The URL reaches env.py through the Config, never a file; configparser needs % doubled.
    rendered = url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def _script_directory(config: Config, settings: Settings) -> ScriptDirectory:
    try:
        script = ScriptDirectory.from_config(config)
        # Alembic's walk skips a directory it cannot list: without this, no revisions.
        project_files.require_listable(
            version_directories(script), script.recursive_version_locations
        )
        with warnings.catch_warnings():
            # Alembic only warns of these, then fails with a bare KeyError or runs one of
            # two revisions at random: a broken project all the same.
            warnings.filterwarnings("error", _BROKEN_GRAPH.pattern, UserWarning)
            script.get_heads()  # loads every revision file now, so a broken one is a usage error
        # Python may run a revision from its cached bytecode without opening the file, and
        # env.py is read only after connecting: every file Alembic runs must be readable now.
        project_files.require_readable(
            [_env_py(script), *(Path(revision.path) for revision in script.walk_revisions())]
        )
    except (CommandError, RevisionError) as error:
        raise UsageError(f"{settings.alembic_ini}: {error}") from None
    except UserWarning as warning:
        raise UsageError(_broken_graph(script, str(warning))) from None
    except PermissionError:
        raise  # alembic_project names the file
    except Exception as error:  # a revision's own code failed as it was loaded
        fault = errors.project_fault(error)
        if fault is None and isinstance(error, UnicodeDecodeError):
            fault = f"a revision file: {type(error).__name__}: {error}"
        if fault is None:
            raise
        raise UsageError(fault) from None
    return script


def version_directories(script: ScriptDirectory) -> list[Path]:
    """Where Alembic looks for revisions, as it resolves them (`pkg:dir` resources, the
    default versions/ under the script directory)."""
    return list(script._version_locations)


def _env_py(script: ScriptDirectory) -> Path:
    """The file Alembic runs as env.py: the source, or its bytecode when the source is gone
    (alembic.util.pyfiles.load_python_file)."""
    source = Path(script.env_py_location)
    return source if source.exists() else Path(pyc_file_from_path(source) or source)


_BROKEN_GRAPH = re.compile(
    r"Revision (\S+) (?:is present more than once|referenced from .* is not present)"
)


def _broken_graph(script: ScriptDirectory, warning: str) -> str:
    """A revision id that two files claim, or a down_revision that no file has: the files."""
    match = _BROKEN_GRAPH.match(warning)
    revision = match.group(1) if match else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Alembic's own loader (private, read only on this error path): every revision file.
        loaded = list(script._load_revisions())
    claiming = [found.path for found in loaded if found.revision == revision]
    if "more than once" in warning:
        return f"{' and '.join(claiming)}: both are revision {revision}; a revision id is unique"
    referring = [
        found.path
        for found in loaded
        for named in (found.down_revision, found.dependencies)
        if revision == named or (isinstance(named, (tuple, list)) and revision in named)
    ]
    return (
        f"{', '.join(referring) or script.dir}: down_revision {revision!r} is no revision of "
        "this project (a file deleted or renamed, or a typo)"
    )


def refuse_unresolvable_target(script: ScriptDirectory, target: str) -> None:
    """Fail before connecting when the target cannot name a revision of this project."""
    if RELATIVE_TARGET.search(target) or ":" in target:
        return  # relative and ranged targets depend on where the database is
    try:
        script.get_revisions(target)
    except (CommandError, RevisionError) as error:
        raise UsageError(describe_resolution_error(script, target, error)) from None


def revisions_at(script: ScriptDirectory, target: str) -> tuple[str, ...] | None:
    """The version table's rows once a database has reached `target`; None when that depends
    on where the database is (a relative or ranged target)."""
    if RELATIVE_TARGET.search(target) or ":" in target:
        return None
    return tuple(sorted(revision.revision for revision in script.get_revisions(target) if revision))


def inspect(config: Config, script: ScriptDirectory, direction: Direction, target: str) -> State:
    """Read the database's revisions through env.py and plan the way to `target`."""
    found: list[State] = []

    def record(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        state = _state(script, direction, target, heads)[0]
        table = (context.version_table, context.version_table_schema)
        found.append(replace(state, version_table=table))
        return []

    try:
        run_env(config, script, record, dont_mutate=True)
    except DBAPIError as error:
        raise errors.failure(error, "reading the database's revision") from None
    return found[0]


def look_again(
    connection: Connection, script: ScriptDirectory, state: State, direction: Direction, target: str
) -> State:
    """Read the database's revisions again, straight from the version table env.py named
    (no env.py run, no new connection)."""
    assert state.version_table is not None
    try:
        rows = connection.execute(versions_statement(*state.version_table)).all()
        connection.commit()
    except DBAPIError as error:
        connection.rollback()
        if not errors.missing_table(error):
            raise errors.failure(error, "reading the database's revision") from None
        rows = []  # at base: the first run has not created it yet
    heads = tuple(sorted(row[0] for row in rows))
    return replace(_state(script, direction, target, heads)[0], version_table=state.version_table)


def _state(
    script: ScriptDirectory, direction: Direction, target: str, heads: tuple[str, ...]
) -> tuple[State, list[Any]]:
    """Where the database is, and Alembic's own steps to `target` from there."""
    unknown = tuple(head for head in heads if not _knows(script, head))
    planned = [] if unknown else plan_steps(script, direction, target, heads)
    return State(heads, unknown, tuple(step.revision for step in planned)), planned


def apply(
    config: Config,
    script: ScriptDirectory,
    direction: Direction,
    target: str,
    *,
    settings: Settings,
    lock: MigrationLock,
    summary: Summary,
    refuse: Callable[[State], None],
    heads: tuple[str, ...],
    recorder: ledger.Recorder,
) -> None:
    """Run the revisions to `target`, each committed on its own and logged as it completes.

    `heads` are the database's revisions as read under the lock: when env.py finds it
    elsewhere, something other than this run moved it, and nothing more runs.

    The database's revisions are read in the same env.py run, under the migration lock,
    and handed to `refuse`, which may refuse them by raising. Each revision commits only
    after the lock's fence has seen the lock still held.
    A revision that times out waiting for a table lock (55P03) was rolled back; after a
    backoff the run resumes from it, up to MIGRATOR_DDL_LOCK_RETRIES times.
    """
    _Apply(
        config, script, direction, target, settings, lock, summary, refuse, heads, recorder
    ).run()


class _Apply:
    """One `apply`: env.py's callbacks (the steps, the fence, the autocommit watch) and the
    retry's (report a blocker, wait for its release), over what they share: the progress,
    and the table locks held when a revision timed out."""

    def __init__(
        self,
        config: Config,
        script: ScriptDirectory,
        direction: Direction,
        target: str,
        settings: Settings,
        lock: MigrationLock,
        summary: Summary,
        refuse: Callable[[State], None],
        heads: tuple[str, ...],
        recorder: ledger.Recorder,
    ) -> None:
        self.config, self.script = config, script
        self.recorder = recorder
        self.direction, self.target = direction, target
        self.settings, self.lock, self.refuse = settings, lock, refuse
        self.session = lock.session
        self.progress = _Progress(summary, heads)
        self.held_then: set[tuple[int, int]] = set()

    def run(self) -> None:
        retrying = retry.retrying(
            retry=retry_if_exception(lock_not_available),
            wait=wait_random_exponential(multiplier=0.5, max=10),
            stop=stop_after_attempt(self.settings.ddl_lock_retries + 1),
            before_sleep=self.report_blocker,
            sleep=self.until_released,
            reraise=True,
        )
        try:
            retrying(
                run_env,
                self.config,
                self.script,
                self.steps,
                on_version_apply=[self.fence, self.progress.applied],
                destination_rev=self.target,
            )
        except Exception as error:
            failure = _failure(error, self.progress, self.lock, self.settings)
            self.record_failure(failure, error)
            raise failure from error

    def record_failure(self, failure: MigratorError, error: BaseException) -> None:
        """The deploy ledger's row for the revision in flight, after its rollback. A lost or
        stalled session, or a lost lock, leaves none: no session holding the lock is left to
        write it on (a new one would write beside another run's work; a stalled one would
        hold the run past its stop)."""
        current = self.progress.current
        if current is None or isinstance(failure, (ConnectionLost, LockLost)):
            return
        if connection_lost(errors.underlying(error)) or self.session.connection.invalidated:
            return
        self.progress.summary.ledger = self.recorder.failed(
            self.session.connection,
            str(current.revision),
            self.direction,
            "interrupted" if signals.stop_requested.is_set() else "failed",
            str(failure),
            self.progress.wall_started(),
        )

    def steps(self, heads: tuple[str, ...], context: MigrationContext) -> Iterator[Any]:
        progress = self.progress
        if tuple(sorted(heads)) != progress.heads:
            progress.summary.to_revision = heads_name(heads)  # where it is, read from it
            raise MigrationFailed(
                f"the database is at {heads_name(heads)}, but this run, holding the migration "
                f"lock, left it at {heads_name(progress.heads)}: something else applied or "
                "reverted revisions (code env.py imports, running migrations on its own?); "
                "nothing more ran; find what did before rerunning"
            )
        connection = context.connection
        assert connection is not None
        if connection is not self.session.connection:
            # env.py made a connection of its own: the lock's session now sits idle, so
            # watch it, and give env.py's connection the same checks as ours.
            progress.own_connection = True
            self.session.check_timeouts(connection)
            self.lock.watch()
        if not event.contains(connection, "before_cursor_execute", self.outside_transaction):
            event.listen(connection, "before_cursor_execute", self.outside_transaction)
        state, planned = _state(self.script, self.direction, self.target, heads)
        self.refuse(state)
        return progress.track(planned)

    def outside_transaction(self, connection: Connection, *_: Any) -> None:
        if self.progress.current is None:
            return
        if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            # Not undone by a rollback, so it must not run at all without the lock.
            self.progress.outside_transaction = True
            if self.progress.own_connection:
                self.lock.confirm()

    def fence(self, *, ctx: MigrationContext, step: MigrationInfo, **_: Any) -> None:
        assert ctx.connection is not None
        # The deploy ledger's row in the fence's round trip: they commit together.
        row = self.recorder.row_for(ctx.connection, step)
        self.lock.fence(ctx.connection, self.progress.describe(), row)

    def report_blocker(self, state: RetryCallState) -> None:
        self.held_then = set(table_locks(self.session))
        log.warning(
            "%s timed out waiting for a table lock (MIGRATOR_DDL_LOCK_TIMEOUT); rolled back, "
            "retry %d of %d once they are released (at most %.1f s); blocked by %s",
            self.progress.describe(),
            state.attempt_number,
            self.settings.ddl_lock_retries,
            state.upcoming_sleep,
            table_lock_holders(self.session),
        )

    def until_released(self, seconds: float) -> None:
        # Waiting here queues nobody (the revision is rolled back): retry as soon as the
        # table locks held when it timed out are gone, not after a blind backoff.
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not signals.stop_requested.is_set():
            if not self.held_then & table_locks(self.session):
                return
            signals.sleep(min(RELEASE_POLL_SECONDS, deadline - time.monotonic()))


def stamp(
    config: Config,
    script: ScriptDirectory,
    target: str,
    *,
    lock: MigrationLock,
    recorder: ledger.Recorder,
    heads: tuple[str, ...],
) -> None:
    """Alembic's stamp, as its `command.stamp` runs it, with the lock's fence and the
    ledger's rows in the stamp's transaction."""

    def fence(*, ctx: MigrationContext, **_: Any) -> None:
        assert ctx.connection is not None
        lock.fence(ctx.connection, f"the stamp to {target}")

    run_env(
        config,
        script,
        lambda heads, context: script._stamp_revs(target, heads),
        on_version_apply=[fence, recorder.stamped(heads)],
        destination_rev=target,
    )


def _failure(
    error: BaseException, progress: _Progress, lock: MigrationLock, settings: Settings
) -> MigratorError:
    """What a failed run means, and what it left behind when it worked outside a transaction."""
    what = progress.describe()
    if not isinstance(error, MigratorError):
        error = errors.underlying(error)
    stopping = signals.stop_requested.is_set()
    if isinstance(error, ConnectionLost) and not stopping and not lock.held()[0]:
        error = LockLost(f"the migration lock was lost: its session ended during {what} ({error})")
    if isinstance(error, MigratorError) and not progress.outside_transaction:
        return error
    failed = _Failed(error, what, progress, lock, settings)
    meanings = (meaning(failed) for meaning in _MEANINGS)
    failure = next(filter(None, meanings), None) or errors.failure(
        error, f"{what} failed and was rolled back"
    )
    if progress.outside_transaction:
        left = lock.session.invalid_indexes()
        failure.args = (
            f"{failure}; but {what} ran statements outside a transaction, which are not "
            "rolled back"
            + (f"; it left: {'; '.join(left)}" if left else "")
            + "; undo or finish what it did, then rerun",
        )
    return failure


@dataclass(frozen=True)
class _Failed:
    """A failed run, as each of _MEANINGS reads it."""

    error: BaseException
    what: str  # the revision in flight, described
    progress: _Progress
    lock: MigrationLock
    settings: Settings


def _interrupted(failed: _Failed) -> MigratorError | None:
    """A signal stopped the run: the revision in flight is rolled back, one way or another."""
    if not signals.stop_requested.is_set():
        return None
    if connection_lost(failed.error):
        return signals.interrupted(
            f"; the connection was lost ({reason(failed.error)}), so the server rolls back "
            f"{failed.what} when it drops the session"
        )
    return signals.interrupted(f"; {failed.what} rolled back")


def _already_said(failed: _Failed) -> MigratorError | None:
    """A failure the migrator named as it happened (the fence, a refusal)."""
    return failed.error if isinstance(failed.error, MigratorError) else None


def _table_lock_timeout(failed: _Failed) -> MigratorError | None:
    """Every try timed out waiting for a table lock (MIGRATOR_DDL_LOCK_RETRIES)."""
    if not lock_not_available(failed.error):
        return None
    return MigrationFailed(
        f"{failed.what} could not take its table lock after "
        f"{failed.settings.ddl_lock_retries + 1} tries; rolled back; blocked by "
        f"{table_lock_holders(failed.lock.session)}; MIGRATOR_DDL_LOCK_TIMEOUT and "
        "MIGRATOR_DDL_LOCK_RETRIES say how long and how often a revision waits for it"
    )


def _lost(failed: _Failed) -> MigratorError | None:
    """A session ended: env.py's own, with the lock still held (3), or the lock's (7)."""
    if not connection_lost(failed.error):
        return None
    if failed.progress.own_connection and failed.lock.held()[0]:
        return ConnectionLost(
            f"env.py's connection was lost during {failed.what} ({reason(failed.error)}); "
            "the server rolled the revision back"
        )
    return LockLost(
        f"the migration lock was lost: its session ended during {failed.what} "
        f"({reason(failed.error)}); the server rolled the revision back"
    )


# What a failure means, the first that applies, in order; any other is the revision's own
# (errors.failure: its SQL or its code).
_MEANINGS = (_interrupted, _already_said, _table_lock_timeout, _lost)


class StepRecorder(Protocol):
    """Watches each revision a `step` runs (the safety report's measurement)."""

    def track(self, planned: Iterable[Any], context: MigrationContext) -> Iterator[Any]: ...

    def applied(self, *, ctx: MigrationContext, **kw: Any) -> None: ...


def step(
    config: Config,
    script: ScriptDirectory,
    direction: Direction,
    target: str,
    recorder: StepRecorder | None = None,
) -> None:
    """Upgrade or downgrade to `target` at once: no lock, no retries, nothing logged."""

    def steps(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        planned = plan_steps(script, direction, target, heads)
        return planned if recorder is None else recorder.track(planned, context)

    run_env(
        config,
        script,
        steps,
        on_version_apply=[] if recorder is None else [recorder.applied],
        destination_rev=target,
    )


def version_table(config: Config, script: ScriptDirectory) -> tuple[str, str | None]:
    """The version table env.py configures (name, schema), read by running env.py offline:
    no database needed."""
    found: list[tuple[str, str | None]] = []

    def record(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        found.append((context.version_table, context.version_table_schema))
        return []

    run_env(config, script, record, as_sql=True, output_buffer=io.StringIO())
    return found[0]


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
        lambda heads, context: plan_steps(script, direction, destination, heads),
        as_sql=True,
        starting_rev=starting_rev or None,
        destination_rev=destination,
    )


def describe_resolution_error(script: ScriptDirectory, target: str, error: Exception) -> str:
    heads = script.get_heads()
    # ScriptDirectory re-raises Alembic's MultipleHeads as a CommandError from it.
    if isinstance(error, MultipleHeads) or isinstance(error.__cause__, MultipleHeads):
        return (
            f"target {target!r} is ambiguous: the migrations have {len(heads)} heads "
            f"({', '.join(heads)}); name one of them, or 'heads' for all"
        )
    # Alembic says "Can't locate" for a prefix of several revisions too; its cause names it.
    prefix = getattr(error.__cause__, "argument", None)
    if isinstance(prefix, str):
        starting = sorted(
            rev.revision for rev in script.walk_revisions() if rev.revision.startswith(prefix)
        )
        if len(starting) > 1:
            return (
                f"target {target!r} is ambiguous: {len(starting)} revisions start with "
                f"{prefix!r} ({', '.join(starting)}); give more of the one you mean"
            )
    return f"target {target!r}: {error}"


def heads_name(heads: Iterable[str]) -> str:
    """A database's revisions as the log and the summary name them: sorted, or `base`."""
    return ",".join(sorted(heads)) or "base"


def _knows(script: ScriptDirectory, revision: str) -> bool:
    try:
        script.get_revision(revision)
    except (CommandError, RevisionError):
        return False
    return True


def _environment(
    config: Config,
    script: ScriptDirectory,
    on_version_apply: list[Callable[..., None]],
    **options: Any,
) -> EnvironmentContext:
    """Alembic's EnvironmentContext, with our defaults under whatever env.py configures."""
    environment = EnvironmentContext(config, script, **options)
    configure_as_asked = environment.configure

    def configure(**asked: Any) -> None:
        _refuse_another_database(config, asked.get("connection"))
        # Each revision commits on its own (env.py may still say otherwise), so a
        # failure leaves the last good revision in place and a rerun resumes.
        asked.setdefault("transaction_per_migration", True)
        if on_version_apply:
            asked["on_version_apply"] = [*(asked.get("on_version_apply") or ()), *on_version_apply]
        configure_as_asked(**asked)

    # env.py reaches the instance through the `alembic.context` proxy, which looks its
    # methods up on the instance: overriding `configure` here is seen by any env.py.
    environment.configure = configure  # type: ignore[method-assign,assignment]
    return environment


def _refuse_another_database(config: Config, connection: Connection | None) -> None:
    """Before Alembic uses a connection env.py made itself (it may create the version table
    at once): it must reach the database the run's session is on (config.attributes
    [IDENTITY], set by the command), or nothing runs."""
    expected: Identity | None = config.attributes.get(IDENTITY)
    if expected is None or connection is None or connection is config.attributes.get("connection"):
        return
    try:
        found = session_identity(connection)
    except Exception as error:  # the driver's own error: SQLAlchemy does not wrap this call
        if not errors.database_error(error):
            raise
        if connection_lost(error):
            raise ConnectionLost(f"env.py's connection was lost ({reason(error)})") from None
        raise errors.failure(error, "reading what env.py's connection reached") from None
    if not found.same_database(expected):
        held = f"the migration lock is held on {expected.describe()}"
        if found.database == expected.database and found.same_server(expected):
            reached = f"env.py's connection is in schema {found.schema}, not {expected.schema}"
        else:
            reached = f"env.py connected to {found.describe()}"
        raise UsageError(
            f"{reached}, but {held}; nothing ran. Let env.py take its URL from "
            "config.get_main_option('sqlalchemy.url') (the migrator sets it), or use the "
            "connection in config.attributes['connection']"
        )


def run_env(
    config: Config,
    script: ScriptDirectory,
    steps: Callable[[tuple[str, ...], MigrationContext], Iterable[Any]],
    *,
    on_version_apply: list[Callable[..., None]] | None = None,
    **options: Any,
) -> None:
    connection = config.attributes.get("connection")
    if connection is not None and (connection.closed or connection.invalidated):
        # The run's session ended (SQLAlchemy would reopen it without the run's setup).
        raise ConnectionLost("the session ended")
    if connection is not None and connection.in_transaction():
        # Alembic commits nothing on a connection that is already in a transaction.
        connection.rollback()
    reached: list[bool] = []

    def reached_steps(heads: tuple[str, ...], context: MigrationContext) -> Iterable[Any]:
        reached.append(True)
        return steps(heads, context)

    with _environment(config, script, on_version_apply or [], fn=reached_steps, **options):
        try:
            script.run_env()
        except (MigratorError, DBAPIError):
            raise
        except Exception as error:
            fault = errors.project_fault(error)
            if reached or fault is None:
                raise  # a revision failed (the caller says so), or a bug of ours
            # env.py itself is broken: a project file to fix, not a migration that failed.
            raise UsageError(fault) from None
        except SystemExit as error:
            raise ProjectExited(
                f"{script.env_py_location} (or a revision it ran) called "
                f"sys.exit({error.code!r}) before the run was done; "
                "env.py must return for the migrator to finish (and say what it did)"
            ) from None


def versions_statement(name: str, schema: str | None) -> TextClause:
    """catalog.select_versions as SQLAlchemy runs it: text() would read a `:` in the table's
    name as a parameter, so it is escaped."""
    return text(catalog.select_versions(name, schema).replace(":", "\\:"))


def version_table_oid(context: MigrationContext) -> int:
    """The version table's oid (0 before it exists), found as Alembic finds it: in the schema
    env.py names, else through search_path (so in MIGRATOR_SCHEMA's schema); what the
    schema snapshot and the safety measurement leave out."""
    connection = context.connection
    assert connection is not None
    name = catalog.version_table(context.version_table, context.version_table_schema)
    return int(connection.execute(_OID_OF, {"name": name}).scalar_one())


def plan_steps(
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

    def __init__(self, summary: Summary, heads: tuple[str, ...]) -> None:
        self.heads = heads  # where the database is, as this run left it
        self.own_connection = False  # env.py runs the revisions on a connection of its own
        self.outside_transaction = False  # the revision in flight ran a statement in autocommit
        self.total = 0
        self.summary = summary
        self.current: Script | None = None
        self.started = time.monotonic()

    def track(self, steps: list[Any]) -> Iterator[Any]:
        # A retry plans again from where the last try stopped.
        self.total = self.summary.applied + len(steps)
        for step in steps:
            self.current = step.revision
            self.outside_transaction = False
            self.started = time.monotonic()
            if log.isEnabledFor(logging.DEBUG):  # describe() reads the docstring: not for free
                log.debug("%s started", self.describe())
            yield step

    def applied(self, *, step: MigrationInfo, heads: set[str], **_: Any) -> None:
        seconds = time.monotonic() - self.started
        described = self.describe()
        self.summary.applied += 1
        self.heads = tuple(sorted(heads))
        self.summary.to_revision = heads_name(self.heads)
        self.summary.revisions.append(
            {
                "revision": step.up_revision_id,
                "message": self.current.doc if self.current is not None else None,
                "direction": "upgrade" if step.is_upgrade else "downgrade",
                "seconds": round(seconds, 3),
            }
        )
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

    def wall_started(self) -> datetime:
        """When the revision in flight started, on the wall clock."""
        return datetime.now(UTC) - timedelta(seconds=time.monotonic() - self.started)

    def describe(self) -> str:
        if self.current is None:
            return "the migration"
        position = self.summary.applied + 1
        return f"[{position}/{self.total}] {self.current.revision} ({self.current.doc})"
