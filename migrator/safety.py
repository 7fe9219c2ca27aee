"""The safety report: what each revision locks, rewrites and scans, measured while it runs (on
a scratch database), and weighed against the live size of each table it touches.

The measurement is read from PostgreSQL's own catalogs inside the revision's transaction,
just before it commits (Alembic's on_version_apply): `pg_locks` of its own backend, and
`pg_class`, `pg_attribute`, `pg_constraint` and `pg_index` compared with a reading taken
before the revision began. Nothing is guessed from SQL text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from migrator.catalog import this_database, user_schema
from migrator.errors import UsageError
from migrator.run import version_table_oid

# PostgreSQL's table lock modes, weakest first, and what each keeps the application from
# doing while it is held (the conflict table of the "Explicit Locking" chapter).
MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
BLOCKS = {
    "AccessExclusiveLock": "reads and writes",
    "ExclusiveLock": "writes",
    "ShareRowExclusiveLock": "writes",
    "ShareLock": "writes",
}
SEVERITIES = ("info", "warning", "error")
# Catalog readings. Names are schema-qualified and quoted as SQL needs them (format %I.%I).
# Objects from 16384 (FirstNormalObjectId) on are the database's own: the built-in catalogs
# below it are left out by oid, through the index, rather than by a scan of their rows.
_RELATIONS = text(
    f"""
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind, c.relfilenode,
           coalesce(i.indrelid, 0)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.relkind IN ('r', 'p', 'm', 'i', 'I') AND c.oid >= 16384
      AND {user_schema("n.nspname")}
    """
)
_COLUMNS = text(
    f"""
    SELECT a.attrelid, a.attnum, a.attname, a.attnotnull,
           -- NOT NULL, and nothing fills the rows there are: no default, no value kept for
           -- them (attmissingval: a default added with the column, even if dropped since),
           -- no identity, no generation expression
           a.attnotnull AND NOT a.atthasdef AND NOT a.atthasmissing
           AND a.attidentity = '' AND a.attgenerated = ''
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attrelid >= 16384
      AND c.relkind IN ('r', 'p')
      AND {user_schema("n.nspname")}
    """
)
# Columns a validated CHECK (column IS NOT NULL) already proves: SET NOT NULL skips the scan.
_PROVEN_NOT_NULL = text(
    """
    SELECT a.attrelid, a.attname
    FROM pg_constraint k
    JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum > 0
    WHERE k.contype = 'c' AND k.convalidated AND k.conrelid >= 16384
      AND pg_get_constraintdef(k.oid) = format('CHECK ((%s IS NOT NULL))', quote_ident(a.attname))
    """
)
# Each foreign key and CHECK with the table it is checked on, and whether it is validated. A
# domain's CHECK is checked on every table with a column of the domain.
_CONSTRAINTS = text(
    """
    SELECT oid, conname, conrelid, convalidated FROM pg_constraint
    WHERE contype IN ('f', 'c') AND conrelid <> 0 AND oid >= 16384
    UNION ALL
    SELECT k.oid, k.conname, a.attrelid, k.convalidated
    FROM pg_constraint k
    JOIN pg_attribute a ON a.atttypid = k.contypid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE k.contype = 'c' AND k.contypid <> 0 AND k.oid >= 16384 AND a.attrelid >= 16384
    """
)
_LOCKS = text(
    f"""
    SELECT relation, mode FROM pg_locks
    WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted
      AND {this_database("database")}
    """
)
_SIZE = text(
    """
    SELECT c.reltuples::bigint, pg_total_relation_size(c.oid)
    FROM pg_class c WHERE c.oid = to_regclass(:name)
    """
)


@dataclass(frozen=True)
class _Catalog:
    """One reading of the catalogs: what a revision's effects are measured against."""

    relations: dict[int, tuple[str, str, int, int]]  # oid: name, relkind, relfilenode, table
    columns: dict[tuple[int, int], str]  # (table oid, attnum): name
    nullable: set[tuple[int, str]]  # (table oid, column)
    unfilled: set[tuple[int, int]]  # (table oid, attnum): NOT NULL, nothing fills it
    proven_not_null: set[tuple[int, str]]
    constraints: dict[tuple[int, int], tuple[str, bool]]  # (oid, table oid): name, validated

    @classmethod
    def read(cls, connection: Connection) -> _Catalog:
        relations = {
            row[0]: (row[1], row[2], row[3], row[4]) for row in connection.execute(_RELATIONS)
        }
        columns = list(connection.execute(_COLUMNS))
        return cls(
            relations=relations,
            columns={(row[0], row[1]): row[2] for row in columns},
            nullable={(row[0], row[2]) for row in columns if not row[3]},
            unfilled={(row[0], row[1]) for row in columns if row[4]},
            proven_not_null={(row[0], row[1]) for row in connection.execute(_PROVEN_NOT_NULL)},
            constraints={
                (row[0], row[2]): (row[1], row[3]) for row in connection.execute(_CONSTRAINTS)
            },
        )

    def tables(self) -> dict[int, str]:
        return {oid: r[0] for oid, r in self.relations.items() if r[1] in ("r", "p", "m")}


@dataclass
class Effects:
    """What one revision did, measured in its own transaction just before it committed.

    Tables are named as they were before the revision (a renamed table by its old name)."""

    revision: str
    message: str
    direction: str
    # Every table that existed before the revision and that it holds a lock on, with the
    # strongest mode held (PostgreSQL's name, e.g. AccessExclusiveLock).
    locks: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)  # tables it created
    rewritten: list[str] = field(default_factory=list)  # tables given a new relfilenode
    validated: list[dict[str, str]] = field(default_factory=list)  # {table, constraint}
    not_null: list[dict[str, str]] = field(default_factory=list)  # {table, column}
    indexes: list[dict[str, str]] = field(default_factory=list)  # {table, index}
    changed_rows: list[str] = field(default_factory=list)  # tables it inserted/updated/deleted in
    outside_transaction: bool = False
    # Constraints added NOT VALID earlier that it validated, writes going on: {table, constraint}
    validated_existing: list[dict[str, str]] = field(default_factory=list)
    reindexed: list[dict[str, str]] = field(default_factory=list)  # {table, index} rebuilt
    dropped: list[str] = field(default_factory=list)  # tables it dropped
    renamed: list[dict[str, str]] = field(default_factory=list)  # {table, to}
    dropped_columns: list[dict[str, str]] = field(default_factory=list)  # {table, column}
    renamed_columns: list[dict[str, str]] = field(default_factory=list)  # {table, column, to}
    # Columns added NOT NULL with nothing to fill the rows there are: {table, column}
    required_columns: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Comparison:
    """Two readings of the catalogs around one revision, and the locks it holds: its effects.

    Objects are followed by their oid (a column by its attnum), so a rename is told from a
    drop and a create. Only tables that existed before are considered (`old`)."""

    before: _Catalog
    after: _Catalog
    old: dict[int, str]  # oid: name before the revision
    locks: dict[str, str]  # table: strongest mode held

    def rewritten(self) -> list[str]:
        after, before = self.after.relations, self.before.relations
        return sorted(
            name
            for oid, name in self.old.items()
            if oid in after and after[oid][2] != before[oid][2]
        )

    def indexes(self, rewritten: list[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """Indexes built, and indexes rebuilt (REINDEX: a new relfilenode, same oid), inside
        the transaction on a table it did not rewrite (a rewrite rebuilds its indexes)."""
        built: list[dict[str, str]] = []
        rebuilt: list[dict[str, str]] = []
        for oid, (name, kind, relfilenode, table) in self.after.relations.items():
            if kind not in ("i", "I") or table not in self.old or self.old[table] in rewritten:
                continue
            item = {"table": self.old[table], "index": name}
            if oid not in self.before.relations:
                # Still holds the table's SHARE lock (CONCURRENTLY takes SHARE UPDATE
                # EXCLUSIVE, and only outside a transaction).
                if _at_least(self.locks.get(self.old[table]), "ShareLock"):
                    built.append(item)
            elif relfilenode != self.before.relations[oid][2]:
                rebuilt.append(item)
        return built, rebuilt

    def validated(self, rewritten: list[str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """Constraints validated in the transaction: those that scanned the table while writes
        waited (added validated, or validated under SHARE or more), and those validated with
        writes going on (VALIDATE CONSTRAINT of a NOT VALID one: SHARE UPDATE EXCLUSIVE). A
        table it rewrote checked them in the same pass (a type change rebuilds a CHECK)."""
        before = {oid: valid for (oid, _), (_, valid) in self.before.constraints.items()}
        blocking: list[dict[str, str]] = []
        concurrent: list[dict[str, str]] = []
        for (oid, table), (name, valid) in sorted(self.after.constraints.items()):
            if not valid or table not in self.old or self.old[table] in rewritten:
                continue
            if before.get(oid, False):
                continue  # validated before the revision
            item = {"table": self.old[table], "constraint": name}
            writes_went_on = oid in before and not _at_least(
                self.locks.get(item["table"]), "ShareLock"
            )
            (concurrent if writes_went_on else blocking).append(item)
        return blocking, concurrent

    def not_null(self) -> list[dict[str, str]]:
        names = set((table, name) for (table, _), name in self.after.columns.items())
        return [
            {"table": self.old[table], "column": column}
            for table, column in sorted(self.before.nullable - self.after.nullable)
            if table in self.old
            and (table, column) in names
            and (table, column) not in self.before.proven_not_null
        ]

    def tables(self) -> tuple[list[str], list[dict[str, str]]]:
        """Tables dropped, and tables renamed (or moved to another schema)."""
        after = self.after.relations
        dropped = sorted(name for oid, name in self.old.items() if oid not in after)
        renamed = [
            {"table": name, "to": after[oid][0]}
            for oid, name in sorted(self.old.items(), key=lambda item: item[1])
            if oid in after and after[oid][0] != name
        ]
        return dropped, renamed

    def columns(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """Columns dropped, and columns renamed, of tables that are still there."""
        dropped: list[dict[str, str]] = []
        renamed: list[dict[str, str]] = []
        for (table, number), name in sorted(self.before.columns.items()):
            if table not in self.old or table not in self.after.relations:
                continue
            now = self.after.columns.get((table, number))
            if now is None:
                dropped.append({"table": self.old[table], "column": name})
            elif now != name:
                renamed.append({"table": self.old[table], "column": name, "to": now})
        return dropped, renamed

    def required_columns(self, rewritten: list[str]) -> list[dict[str, str]]:
        """Columns added NOT NULL with no default: that works on the empty scratch table, and
        fails on one with rows. Not on a table it rewrote, which may have filled them (a
        volatile default, dropped in the same revision)."""
        return [
            {"table": self.old[table], "column": self.after.columns[table, number]}
            for table, number in sorted(self.after.unfilled - set(self.before.columns))
            if table in self.old and self.old[table] not in rewritten
        ]


class Recorder:
    """Measures each revision a run applies: hand `track` to run.step as the steps and
    `applied` as an on_version_apply callback."""

    def __init__(self) -> None:
        self.effects: list[Effects] = []
        self._before: _Catalog | None = None
        self._current: Effects | None = None
        # The catalog as the last measured step left it: the next step starts from it,
        # unless a step it did not measure ran in between.
        self._after: _Catalog | None = None

    def track(self, planned: Iterable[Any], context: MigrationContext) -> Iterator[Any]:
        connection = context.connection
        assert connection is not None
        if not event.contains(connection, "before_cursor_execute", self._outside_transaction):
            event.listen(connection, "before_cursor_execute", self._outside_transaction)
        for step in planned:
            revision: Script = step.revision
            # Read in the transaction the step then runs in (Alembic continues the one open).
            self._before = self._after or _Catalog.read(connection)
            self._after = None
            self._current = Effects(
                revision.revision, revision.doc, "upgrade" if step.is_upgrade else "downgrade"
            )
            yield step

    def applied(self, *, ctx: MigrationContext, **_: Any) -> None:
        if self._current is None:
            self._after = None  # a step it was not asked to measure (verify's downgrades)
            return
        assert ctx.connection is not None and self._before is not None
        effects, before = self._current, self._before
        after = _Catalog.read(ctx.connection)
        version_table = version_table_oid(ctx)  # the run's bookkeeping, not the project's
        old_tables = {oid: name for oid, name in before.tables().items() if oid != version_table}
        modes: dict[int, set[str]] = {}
        for relation, mode in ctx.connection.execute(_LOCKS):
            modes.setdefault(relation, set()).add(mode)
        for oid, held in modes.items():
            if oid in old_tables:
                effects.locks[old_tables[oid]] = max(held, key=MODES.index)
        change = _Comparison(before, after, old_tables, effects.locks)
        effects.created = sorted(
            name for oid, name in after.tables().items() if oid not in before.relations
        )
        effects.rewritten = change.rewritten()
        effects.validated, effects.validated_existing = change.validated(effects.rewritten)
        effects.not_null = change.not_null()
        effects.indexes, effects.reindexed = change.indexes(effects.rewritten)
        effects.dropped, effects.renamed = change.tables()
        effects.dropped_columns, effects.renamed_columns = change.columns()
        effects.required_columns = change.required_columns(effects.rewritten)
        effects.changed_rows = sorted(
            name for oid, name in old_tables.items() if "RowExclusiveLock" in modes.get(oid, ())
        )
        self.effects.append(effects)
        self._current = None
        self._after = after

    def in_flight(self) -> str:
        return "a revision" if self._current is None else self._current.revision

    def _outside_transaction(self, connection: Connection, *_: Any) -> None:
        autocommit = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
        if self._current is not None and autocommit:
            self._current.outside_transaction = True


@dataclass
class Finding:
    """One effect of one revision on one table, weighed with the table's live size."""

    revision: str
    rule: str
    table: str
    severity: str
    lock: str | None  # PostgreSQL's mode name, e.g. AccessExclusiveLock
    blocks: str  # what the application cannot do while it is held
    rows: int | None  # live rows (pg_class.reltuples); None: not known
    bytes: int | None  # pg_total_relation_size; None: no such table on the real database
    what: str
    safer: str
    allowed: bool = False  # the revision accepts it (migrator_safety = {"allow": [...]})

    def line(self) -> str:
        size = "new table" if self.bytes is None else f"{_rows(self.rows)}, {_bytes(self.bytes)}"
        lock = f"; {lock_name(self.lock)} blocks {self.blocks}" if self.lock else ""
        allowed = " (allowed by the revision)" if self.allowed else ""
        return (
            f"{self.severity:<7} {self.rule} {self.table} ({size}) in {self.revision}: "
            f"{self.what}{lock}{allowed}; safer: {self.safer}"
        )


@dataclass
class Report:
    findings: list[Finding]
    revisions: list[Effects]
    notes: list[str]

    def refused(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error" and not f.allowed]


@dataclass(frozen=True)
class Rule:
    """One kind of finding: the effect it reads, what is safer, and how severe it can be."""

    name: str
    effect: str  # the Effects field it reads: tables, or items {table, ...}
    what: str  # what the revision did, formatted with the item's fields
    safer: str
    ceiling: str = "error"  # the most it is, however large the table
    # Its severity on a table with any rows, however few, when its risk is not the time it
    # takes: what it removes or renames breaks the running release, or it fails.
    with_rows: str | None = None
    blocks: str | None = None  # in place of what its lock blocks
    # A contraction: it breaks the old release, which still runs during the pre phase of a
    # deploy (migrator.phases), so there it is an error on any table that exists.
    contracts: bool = False

    def found(self, measured: Effects) -> Iterator[tuple[str, str]]:
        for item in getattr(measured, self.effect):
            fields = {"table": item} if isinstance(item, str) else item
            yield fields["table"], self.what.format(**fields)


_AFTER_THE_DEPLOY = (
    "after the deploy, in a later revision, once no running release reads it (deploy the "
    "code that stops using it first)"
)
# One entry per rule, in the order a revision's findings are listed; `exclusive-lock` is the
# remainder: a table locked against the application that no other rule explains.
RULE_TABLE = (
    Rule(
        "table-rewrite",
        "rewritten",
        "rewrites the table and its indexes",
        "add a new column, backfill it in batches, then switch over, instead of changing a "
        "column's type (or adding a column with a volatile default)",
    ),
    Rule(
        "validated-constraint",
        "validated",
        "adds constraint {constraint} validated: scans the table",
        "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a later revision (it takes "
        "SHARE UPDATE EXCLUSIVE: reads and writes go on)",
    ),
    Rule(
        "validate-constraint",
        "validated_existing",
        "validates constraint {constraint}: scans the table, reads and writes go on",
        "nothing to change: this is the safe second step after ADD CONSTRAINT ... NOT VALID "
        "(while it scans, VACUUM and other schema changes of the table wait)",
        ceiling="info",
    ),
    Rule(
        "set-not-null",
        "not_null",
        "SET NOT NULL on {column}: scans the table",
        "ADD CONSTRAINT ... CHECK (column IS NOT NULL) NOT VALID, VALIDATE it in a later "
        "revision, then SET NOT NULL, which uses the check instead of a scan",
    ),
    Rule(
        "index-without-concurrently",
        "indexes",
        "builds index {index} in the transaction",
        "CREATE INDEX CONCURRENTLY in an autocommit block "
        "(op.get_context().autocommit_block(), postgresql_concurrently=True); for a PRIMARY "
        "KEY or UNIQUE constraint, its unique index so, then ADD CONSTRAINT ... USING INDEX",
    ),
    Rule(
        "index-rebuild",
        "reindexed",
        "rebuilds index {index} in the transaction (REINDEX; the table is not rewritten)",
        "REINDEX INDEX CONCURRENTLY in an autocommit block",
        blocks="writes, and nearly all reads (the index is held ACCESS EXCLUSIVE, and planning "
        "any query on the table locks each of its indexes)",
    ),
    Rule(
        "drop-table",
        "dropped",
        "drops the table",
        f"drop it {_AFTER_THE_DEPLOY}",
        with_rows="warning",
        contracts=True,
    ),
    Rule(
        "rename-table",
        "renamed",
        "renames the table to {to}",
        "rename it after the deploy, in a later revision, once no running release uses the old "
        "name (or leave a view by the old name for it)",
        with_rows="warning",
        contracts=True,
    ),
    Rule(
        "drop-column",
        "dropped_columns",
        "drops column {column}",
        f"drop it {_AFTER_THE_DEPLOY}",
        with_rows="warning",
        contracts=True,
    ),
    Rule(
        "rename-column",
        "renamed_columns",
        "renames column {column} to {to}",
        f"add the new column and write both; drop the old one {_AFTER_THE_DEPLOY}",
        with_rows="warning",
        contracts=True,
    ),
    Rule(
        "required-column",
        "required_columns",
        "adds column {column} NOT NULL without a default: fails on a table with rows (it works "
        "on the empty scratch table)",
        "add it with a DEFAULT; or nullable, backfill it, then SET NOT NULL (see set-not-null)",
        with_rows="error",
        contracts=True,  # the old release, which does not know the column, cannot insert
    ),
    Rule(
        "data-change",
        "changed_rows",
        "changes rows in its transaction: how many depends on the data (the scratch database "
        "has none), at most the table's rows",
        "update in batches, each in its own transaction (an autocommit block), or outside the "
        "deploy",
        ceiling="warning",  # not measured, so never an error on its own
        blocks="writes to the rows it changes, until it commits",
    ),
)
_TOO_SOON = "the old release, still running until the rollout ends, uses what it changes"
_POST = (
    "move it to the post phase, which runs once no pod of the old release is left: a "
    "revision on the branch labelled post (alembic revision --head post@head)"
)
CATALOG_ONLY = Rule(
    "exclusive-lock",
    "locks",
    "changes the catalog only (no rewrite, no scan)",
    "set MIGRATOR_DDL_LOCK_TIMEOUT: the change is brief once the lock is granted, but waiting "
    "for it (behind running queries, with every query queued behind it) is then bounded",
    ceiling="info",
)
RULES = tuple(rule.name for rule in (*RULE_TABLE, CATALOG_ONLY))


@dataclass(frozen=True)
class _Scale:
    """The live sizes a finding is weighed with, and what each revision accepts."""

    sizes: dict[str, tuple[int | None, int]]  # table: live rows, bytes
    allowances: dict[str, list[str]]
    warn_rows: int
    error_rows: int
    before_rollout: set[str]  # revisions of a deploy's pre phase: the old release still runs

    def finding(self, measured: Effects, rule: Rule, table: str, what: str) -> Finding:
        lock = measured.locks.get(table)
        rows, size = self.sizes.get(table, (0, None))
        severity, safer = self.severity(rule, table), rule.safer
        if rule.contracts and measured.revision in self.before_rollout and table in self.sizes:
            severity, what, safer = "error", f"{what}, in the pre phase: {_TOO_SOON}", _POST
        return Finding(
            revision=measured.revision,
            rule=rule.name,
            table=table,
            severity=severity,
            lock=lock,
            blocks=rule.blocks or BLOCKS.get(lock or "", "nothing"),
            rows=rows,
            bytes=size,
            what=what,
            safer=safer,
            allowed=_allows(self.allowances.get(measured.revision, []), rule.name, table),
        )

    def severity(self, rule: Rule, table: str) -> str:
        if table not in self.sizes:
            return "info"  # not on the real database: created by an earlier pending revision
        rows = self.sizes[table][0]
        if rule.with_rows:
            return "info" if rows == 0 else "warning" if rows is None else rule.with_rows
        level = (
            "warning"
            if rows is None  # unknown: not assumed small
            else "error"
            if rows >= self.error_rows
            else "warning"
            if rows >= self.warn_rows
            else "info"
        )
        return min(level, rule.ceiling, key=SEVERITIES.index)


def weigh(
    effects: list[Effects],
    sizes: dict[str, tuple[int | None, int]],
    allowances: dict[str, list[str]],
    warn_rows: int,
    error_rows: int,
    before_rollout: set[str] | None = None,
) -> Report:
    """The findings of measured effects, sized by `sizes` (table: live rows, bytes), in the
    order the revisions run. A table an earlier one of them created has no finding (it is
    new and empty when they run); one an earlier one renamed is weighed with the size it has
    on the database under its old name. A contraction by a revision `before_rollout` (a
    deploy's pre phase) is an error."""
    sizes = dict(sizes)
    scale = _Scale(sizes, allowances, warn_rows, error_rows, before_rollout or set())
    findings: list[Finding] = []
    notes: list[str] = []
    created: set[str] = set()  # by the revisions weighed so far
    for measured in effects:
        own = [
            scale.finding(measured, rule, table, what)
            for rule in RULE_TABLE
            for table, what in rule.found(measured)
            if table not in created
        ]
        explained = {finding.table for finding in own}
        own += [
            scale.finding(measured, CATALOG_ONLY, table, what)
            for table, what in CATALOG_ONLY.found(measured)
            if table not in explained and table in sizes and measured.locks[table] in BLOCKS
        ]
        findings += own
        created |= set(measured.created)
        for renamed in measured.renamed:
            if renamed["table"] in created:
                created.add(renamed["to"])
            elif renamed["table"] in sizes:
                sizes[renamed["to"]] = sizes[renamed["table"]]
        if measured.outside_transaction:
            notes.append(
                f"{measured.revision} runs statements outside a transaction: their locks end "
                "with each statement and are not measured; a failure there is not rolled back"
            )
    findings.sort(key=lambda f: -SEVERITIES.index(f.severity))
    return Report(findings, effects, notes)


def live_sizes(
    connection: Connection, tables: Iterable[str], count_up_to: int
) -> dict[str, tuple[int | None, int]]:
    """Live rows and bytes of each table that exists on this (the real) database.

    Rows are PostgreSQL's own estimate (pg_class.reltuples, kept by ANALYZE and VACUUM). A
    table never analyzed has none: its rows are counted, but only up to `count_up_to`, and
    only if no one holds it locked (else None: not known)."""
    sizes: dict[str, tuple[int | None, int]] = {}
    try:
        for table in sorted(set(tables)):
            row = connection.execute(_SIZE, {"name": table}).first()
            if row is not None:
                rows = int(row[0]) if row[0] >= 0 else _count(connection, table, count_up_to)
                sizes[table] = (rows, int(row[1]))
    finally:
        connection.rollback()
    return sizes


def _count(connection: Connection, table: str, up_to: int) -> int | None:
    # `table` is a name PostgreSQL quoted itself (format %I.%I): safe to put in the statement.
    savepoint = connection.begin_nested()
    try:
        connection.execute(text("SET LOCAL lock_timeout = '1s'"))
        counted = connection.execute(
            text(f"SELECT count(*) FROM (SELECT FROM {table} LIMIT :n) AS counted"), {"n": up_to}
        ).scalar_one()
    except DBAPIError:
        savepoint.rollback()
        return None
    savepoint.commit()
    return int(counted)


def touched_tables(effects: Iterable[Effects]) -> set[str]:
    found: set[str] = set()
    for measured in effects:
        found |= set(measured.locks) | set(measured.rewritten) | set(measured.changed_rows)
    return found


def allowances(script: ScriptDirectory, revisions: Iterable[str]) -> dict[str, list[str]]:
    """Each revision's accepted risks: `migrator_safety = {"allow": ["rule:table", ...]}`
    at the top level of its file."""
    found: dict[str, list[str]] = {}
    for revision in revisions:
        module = script.get_revision(revision).module
        declared = getattr(module, "migrator_safety", None)
        if declared is None:
            continue
        allow = declared.get("allow") if isinstance(declared, dict) else None
        if not isinstance(allow, list) or not all(
            isinstance(item, str) and item.partition(":")[0] in RULES and ":" in item
            for item in allow
        ):
            raise UsageError(
                f"{module.__file__}: migrator_safety must be "
                '{"allow": ["RULE:TABLE", ...]} with RULE one of ' + ", ".join(RULES)
            )
        found[revision] = allow
    return found


def lock_name(mode: str | None) -> str:
    """AccessExclusiveLock -> ACCESS EXCLUSIVE, as the documentation and LOCK TABLE say it."""
    if not mode:
        return "no lock"
    words = "".join(f" {c}" if c.isupper() else c for c in mode.removesuffix("Lock")).strip()
    return words.upper()


def text_lines(report: Report) -> list[str]:
    if not report.findings:
        lines = ["safety: no findings"]
    else:
        counts = {s: sum(f.severity == s for f in report.findings) for s in SEVERITIES}
        lines = [
            "safety: " + ", ".join(f"{n} {s}" for s, n in reversed(counts.items()) if n),
            *(f"  {finding.line()}" for finding in report.findings),
        ]
    return lines + [f"  note: {note}" for note in report.notes]


def markdown(direction: str, source: str, target: str, report: Report) -> str:
    """The report as Markdown, for a pull request or the GitHub job summary."""
    lines = [f"### Safety report: {direction} from {source} to {target}", ""]
    if not report.findings:
        lines.append("No findings.")
    else:
        lines += [
            "| severity | rule | table | rows | size | lock (blocks) | revision | what | safer |",
            "| --- | --- | --- | ---: | ---: | --- | --- | --- | --- |",
        ]
        for f in report.findings:
            size = "new" if f.bytes is None else _bytes(f.bytes)
            lock = f"{lock_name(f.lock)} ({f.blocks})" if f.lock else "—"
            severity = f"{f.severity} (allowed)" if f.allowed else f.severity
            lines.append(
                f"| {severity} | `{f.rule}` | `{f.table}` | {_rows(f.rows)} | {size} | {lock} "
                f"| `{f.revision}` | {f.what} | {f.safer} |"
            )
    lines += [f"\n> {note}" for note in report.notes]
    return "\n".join(lines)


def _at_least(mode: str | None, weakest: str) -> bool:
    return mode is not None and MODES.index(mode) >= MODES.index(weakest)


def _allows(allowed: list[str], rule: str, table: str) -> bool:
    for item in allowed:
        allowed_rule, _, allowed_table = item.partition(":")
        unqualified = table.rpartition(".")[2]
        if allowed_rule == rule and allowed_table in (table, unqualified):
            return True
    return False


def _rows(rows: int | None) -> str:
    return "rows unknown" if rows is None else f"{rows:,} rows"


def _bytes(size: int) -> str:
    amount = float(size)
    for unit in ("bytes", "kB", "MB", "GB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "bytes" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} TB"
