"""The deploy ledger: every upgrade, downgrade, stamp, acceptance and failure, with when, how
long, by which deploy, and the checksum of the revision file as it ran.

Alembic's version table holds only where the database is. The ledger sits beside it, in the
same schema, and each revision's row is written on the revision's own connection inside the
revision's transaction (with the version table's update and the lock's fence), so the two can
never disagree: a rolled-back revision leaves no `applied` row, and a committed one always
has one. A failed or interrupted revision gets a row of its own after its rollback.

The checksum is of the revision module's code as Python reads it (its AST, without docstrings),
so a reformat or a fixed comment is not an edit and a changed statement is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Identity,
    MetaData,
    Table,
    Text,
    func,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from migrator import __version__, catalog, errors
from migrator.errors import AccessDenied, MigratorError, UsageError
from migrator.logs import log
from migrator.project_files import revision_checksum

TABLE_NAME = catalog.LEDGER_TABLE


def table(schema: str | None) -> Table:
    """The ledger, in the version table's schema (None: where search_path finds it)."""
    return Table(
        TABLE_NAME,
        MetaData(),
        Column("id", BigInteger, Identity(always=True), primary_key=True),
        Column("revision", Text, nullable=False),
        # upgrade, downgrade, stamp, accept, adopt
        Column("direction", Text, nullable=False),
        # applied, reverted, stamped, accepted, adopted, outside, failed, interrupted
        Column("outcome", Text, nullable=False),
        Column("checksum", Text),
        Column("started_at", DateTime(timezone=True), nullable=False),
        Column("finished_at", DateTime(timezone=True), nullable=False),
        Column("seconds", Float, nullable=False),
        Column("migrator_version", Text, nullable=False),
        Column("host", Text, nullable=False),
        Column("deploy", Text),
        Column("detail", Text),
        schema=schema,
    )


@dataclass(frozen=True)
class Who:
    """Who ran it: this migrator, on this host or pod, for this deploy (Settings says)."""

    host: str
    deploy: str | None


@dataclass(frozen=True)
class Entry:
    """The newest ledger row that says a revision is in the database."""

    revision: str
    outcome: str
    checksum: str | None
    finished_at: datetime
    deploy: str | None
    seconds: float


def exists(connection: Connection, ledger: Table) -> bool:
    name = connection.dialect.identifier_preparer.format_table(ledger)
    found = connection.execute(select(func.to_regclass(name))).scalar_one()
    return found is not None


def create(connection: Connection, ledger: Table) -> None:
    """Create the ledger (the caller holds the migration lock and commits)."""
    ledger.create(connection, checkfirst=True)


def entries(connection: Connection, ledger: Table) -> dict[str, Entry]:
    """Each revision's newest row that put it in the database, by revision: one query."""
    # The fast path reads the same statement.
    rows = connection.execute(
        text(catalog.literal_colons(catalog.ledger_newest_rows(ledger.schema)))
    ).all()
    return {row.revision: Entry(*row) for row in rows if row.outcome != "reverted"}


def write(
    connection: Connection, row: tuple[str, dict[str, Any]], cleanup: bool = False
) -> dict[str, Any]:
    """One row (Recorder.row), on `connection`, in its transaction, returned as the summary
    shows it (the ledger's newest row)."""
    statement, parameters = row
    written: dict[str, Any] = connection.execute(
        text(f"{statement} RETURNING {catalog.literal_colons(catalog.LEDGER_ROW_JSON)}"),
        parameters,
        # After a stop was requested, as the rollback is: signals refuses other statements.
        execution_options={"migrator_cleanup": cleanup},
    ).scalar_one()
    return written


def newest(connection: Connection, ledger: Table) -> dict[str, Any] | None:
    """The ledger's newest row, as a run's summary shows it: for a fleet's target or the
    action's job summary, what last happened to this database and by which deploy."""
    last = text(catalog.literal_colons(catalog.ledger_last_row(ledger.schema)))
    found: dict[str, Any] | None = connection.execute(last).scalar()
    return found


def history(connection: Connection, ledger: Table) -> list[dict[str, Any]]:
    """Every row, oldest first."""
    rows = connection.execute(select(ledger).order_by(ledger.c.id)).mappings().all()
    return [dict(row) for row in rows]


def changed(
    applied: Iterable[str], recorded: Mapping[str, Entry], files: Mapping[str, str]
) -> list[tuple[Entry, str]]:
    """The applied revisions whose file's checksum is not the one the ledger recorded, each
    with the file's checksum now."""
    return [
        (recorded[revision], files[revision])
        for revision in applied
        if revision in recorded
        and recorded[revision].checksum is not None
        and recorded[revision].checksum != files[revision]
    ]


@functools.cache
def _row_insert(table: str) -> str:
    """A row, timed from `ledger_started_at`, else from its transaction's start (a
    revision's own: it started with the revision)."""
    started = "coalesce(CAST(:ledger_started_at AS timestamptz), now())"
    return (
        f"INSERT INTO {table} (revision, direction, outcome, checksum, started_at, "
        "finished_at, seconds, migrator_version, host, deploy, detail) VALUES (:ledger_revision, "
        f":ledger_direction, :ledger_outcome, :ledger_checksum, {started}, clock_timestamp(), "
        f"extract(epoch FROM clock_timestamp() - {started}), :ledger_version, :ledger_host, "
        ":ledger_deploy, :ledger_detail)"
    )


@dataclass(frozen=True)
class Recorder:
    """Writes the run's rows: one per revision, in the revision's own transaction."""

    table: Table
    who: Who
    script: ScriptDirectory
    # Each revision file's checksum, once a run: the look before the lock, the look under
    # it and the revision's own row all ask (files do not change during a run).
    checksums: dict[str, str | None] = field(default_factory=dict, compare=False)

    def row(
        self,
        connection: Connection,
        revision: str,
        direction: str,
        outcome: str,
        started_at: datetime | None = None,
        detail: str | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """The INSERT of one row, with the revision file's checksum and who this run is, and
        its parameters: `write` runs it alone; the lock's fence runs a revision's in its own
        statement (one round trip). Without `started_at` the row times the transaction it is
        written in (a revision's own: it started with the revision)."""
        table = catalog.literal_colons(
            connection.dialect.identifier_preparer.format_table(self.table)
        )
        return _row_insert(table), {
            "ledger_revision": revision,
            "ledger_direction": direction,
            "ledger_outcome": outcome,
            "ledger_checksum": self.checksum_of(revision),
            "ledger_started_at": started_at,
            "ledger_version": __version__,
            "ledger_host": self.who.host,
            "ledger_deploy": self.who.deploy,
            "ledger_detail": detail,
        }

    def row_for(self, connection: Connection, step: MigrationInfo) -> tuple[str, dict[str, Any]]:
        """A revision's row, for the lock's fence to run inside the revision's transaction
        (after the version table's update): the row commits with the revision or not at all."""
        revision = str(step.up_revision_id)  # on a downgrade too: the revision reverted
        if step.is_upgrade:
            return self.row(connection, revision, "upgrade", "applied")
        return self.row(connection, revision, "downgrade", "reverted")

    def failed(
        self,
        connection: Connection,
        revision: str,
        direction: str,
        outcome: str,
        detail: str,
        started_at: datetime,
    ) -> dict[str, Any] | None:
        """After the revision's rollback, on the run's own session: a row saying so, returned.
        A session that is gone takes no row: the log and the summary still say what failed."""
        try:
            if connection.in_transaction():
                connection.rollback()
            failure = self.row(connection, revision, direction, outcome, started_at, detail)
            written = write(connection, failure, cleanup=True)
            connection.commit()
            return written
        except (DBAPIError, MigratorError) as error:  # the failure itself is what to report
            log.warning(
                "ledger: the %s row for %s was not written (%s)",
                outcome,
                revision,
                errors.reason(error),
            )
            return None

    def stamped(self, before: tuple[str, ...]) -> Callable[..., None]:
        """An on_version_apply hook for a stamp from `before`: a row for each revision the
        stamp marked applied (stamped) or no longer applied (reverted), in its transaction."""

        def hook(*, ctx: MigrationContext, heads: Iterable[str], **_: Any) -> None:
            assert ctx.connection is not None
            was, now = self.applied_below(before), self.applied_below(tuple(heads))
            for revision, outcome in [
                *[(revision, "reverted") for revision in reversed(was) if revision not in now],
                *[(revision, "stamped") for revision in now if revision not in was],
            ]:
                write(ctx.connection, self.row(ctx.connection, revision, "stamp", outcome))

        return hook

    def applied_below(self, heads: tuple[str, ...]) -> list[str]:
        """The revisions a database at `heads` (known to this project) has applied, oldest
        first."""
        below = self.script.iterate_revisions(heads, "base")
        return [script.revision for script in reversed(list(below)) if script]

    def hash_ahead(self, revisions: Iterable[str]) -> None:
        """Hash the files of the revisions a run is about to apply, all at once, before any
        of them runs: hashed one at a time between the revisions' statements, a file took
        about 2.5 times as long (0.36 ms against 0.14 ms in bench/'s 1000-revision chain),
        inside each revision's transaction."""
        for revision in revisions:
            self.checksum_of(revision)

    def checksum_of(self, revision: str) -> str | None:
        if revision not in self.checksums:
            found = self.script.get_revision(revision)
            self.checksums[revision] = None if found is None else revision_checksum(found.path)
        return self.checksums[revision]


@dataclass(frozen=True)
class Look:
    """What the ledger says of the database's applied revisions, read before anything runs."""

    exists: bool
    unrecorded: tuple[str, ...]  # applied, oldest first, with no row saying so
    changed: tuple[tuple[Entry, str], ...]  # applied, whose file's checksum is not the row's

    @property
    def complete(self) -> bool:
        """Nothing to write: the ledger exists and names every applied revision."""
        return self.exists and not self.unrecorded


def look(connection: Connection, recorder: Recorder, heads: tuple[str, ...]) -> Look:
    """Read-only: one query for the ledger's rows, the applied files hashed."""
    try:
        found = exists(connection, recorder.table)
        recorded = entries(connection, recorder.table) if found else {}
        connection.commit()
    except DBAPIError as error:
        connection.rollback()
        raise errors.failure(error, "reading the deploy ledger") from None
    applied = recorder.applied_below(heads)
    files = {revision: recorder.checksum_of(revision) or "" for revision in applied}
    return Look(
        found,
        tuple(revision for revision in applied if revision not in recorded),
        tuple(changed(applied, recorded, files)),
    )


def judge(seen: Look, on_changed_revision: str) -> None:
    """Stop the run (exit 2) when an applied revision's file changed since it ran; with
    MIGRATOR_ON_CHANGED_REVISION=warn, say so and go on."""
    for entry, now in seen.changed:
        by = f" by {entry.deploy}" if entry.deploy else ""
        message = (
            f"revision {entry.revision} was changed after it was {entry.outcome} "
            f"({entry.finished_at:%Y-%m-%d %H:%M:%S %Z}{by}): its checksum was "
            f"{str(entry.checksum)[:12]}, the file's is {now[:12]}"
        )
        if on_changed_revision == "warn":
            log.warning("%s; MIGRATOR_ON_CHANGED_REVISION=warn: going on", message)
            continue
        raise UsageError(
            f"{message}; nothing ran. Review it, then `migrator accept {entry.revision}`, or "
            "set MIGRATOR_ON_CHANGED_REVISION=warn"
        )


def settle(connection: Connection, recorder: Recorder, seen: Look) -> None:
    """Under the migration lock, before anything runs: create the ledger on first use and
    adopt what is applied, or record what was applied outside the migrator. Commits."""
    if seen.complete:
        return
    try:
        if not seen.exists:
            create(connection, recorder.table)
        outcome, direction = ("outside", "upgrade") if seen.exists else ("adopted", "adopt")
        for revision in seen.unrecorded:
            write(connection, recorder.row(connection, revision, direction, outcome))
        connection.commit()
    except DBAPIError as error:
        connection.rollback()
        if errors.permission_denied(error):
            raise AccessDenied(
                f"cannot create the deploy ledger {TABLE_NAME}: {errors.reason(error)}: grant "
                "the role CREATE on the version table's schema, or create the ledger once as "
                "a role that may (the migrator's first run does)"
            ) from None
        raise errors.failure(error, "writing the deploy ledger") from None
    if not seen.exists:
        adopted = (
            f"; {len(seen.unrecorded)} revision(s) applied before it existed recorded as adopted"
        )
        log.info("ledger: created %s%s", TABLE_NAME, adopted if seen.unrecorded else "")
    elif seen.unrecorded:
        log.warning(
            "ledger: %d revision(s) applied outside the migrator (plain alembic?), recorded as "
            "outside with their files' checksums now: %s",
            len(seen.unrecorded),
            ", ".join(seen.unrecorded),
        )


def accept(
    connection: Connection, recorder: Recorder, revision: str, heads: tuple[str, ...]
) -> bool:
    """Record the file's checksum now as the applied revision's (a person reviewed the edit);
    False when the ledger already has it. Under the migration lock; commits."""
    if revision not in recorder.applied_below(heads):
        raise UsageError(
            f"{revision} is not applied to this database (it is at {', '.join(heads) or 'base'}): "
            "only an applied revision's edit can be accepted"
        )
    now = recorder.checksum_of(revision)
    entry = entries(connection, recorder.table).get(revision)
    if entry is not None and entry.checksum == now:
        connection.commit()
        return False
    was = None if entry is None else f"was {entry.checksum}"
    write(connection, recorder.row(connection, revision, "accept", "accepted", detail=was))
    connection.commit()
    return True
