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
RULES = (
    "table-rewrite",
    "validated-constraint",
    "set-not-null",
    "index-without-concurrently",
    "data-change",
    "exclusive-lock",
)
SAFER = {
    "table-rewrite": "add a new column, backfill it in batches, then switch over, instead of "
    "changing a column's type (or adding a column with a volatile default)",
    "validated-constraint": "ADD CONSTRAINT ... NOT VALID, then VALIDATE CONSTRAINT in a later "
    "revision (it takes SHARE UPDATE EXCLUSIVE: reads and writes go on)",
    "set-not-null": "ADD CONSTRAINT ... CHECK (column IS NOT NULL) NOT VALID, VALIDATE it in a "
    "later revision, then SET NOT NULL, which uses the check instead of a scan",
    "index-without-concurrently": "CREATE INDEX CONCURRENTLY in an autocommit block "
    "(op.get_context().autocommit_block(), postgresql_concurrently=True)",
    "data-change": "update in batches, each in its own transaction (an autocommit block), "
    "or outside the deploy",
    "exclusive-lock": "set MIGRATOR_DDL_LOCK_TIMEOUT: the change is brief once the lock is "
    "granted, but waiting for it (behind running queries, with every query queued behind it) "
    "is then bounded",
}
# Catalog readings. Names are schema-qualified and quoted as SQL needs them (format %I.%I).
_RELATIONS = text(
    """
    SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relkind, c.relfilenode,
           coalesce(i.indrelid, 0)
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_index i ON i.indexrelid = c.oid
    WHERE c.relkind IN ('r', 'p', 'm', 'i', 'I')
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
    """
)
_COLUMNS = text(
    """
    SELECT a.attrelid, a.attname, a.attnotnull
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE a.attnum > 0 AND NOT a.attisdropped
      AND c.relkind IN ('r', 'p')
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
    """
)
# Columns a validated CHECK (column IS NOT NULL) already proves: SET NOT NULL skips the scan.
_PROVEN_NOT_NULL = text(
    """
    SELECT a.attrelid, a.attname
    FROM pg_constraint k
    JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum > 0
    WHERE k.contype = 'c' AND k.convalidated
      AND pg_get_constraintdef(k.oid) = format('CHECK ((%s IS NOT NULL))', quote_ident(a.attname))
    """
)
_VALIDATED = text(
    """
    SELECT oid, conname, conrelid FROM pg_constraint
    WHERE contype IN ('f', 'c') AND convalidated AND conrelid <> 0
    """
)
_LOCKS = text(
    """
    SELECT relation, mode FROM pg_locks
    WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
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
    columns: set[tuple[int, str]]  # (table oid, column)
    nullable: set[tuple[int, str]]
    proven_not_null: set[tuple[int, str]]
    validated: dict[int, tuple[str, int]]  # constraint oid: name, table oid

    @classmethod
    def read(cls, connection: Connection) -> _Catalog:
        relations = {
            row[0]: (row[1], row[2], row[3], row[4]) for row in connection.execute(_RELATIONS)
        }
        columns = [(row[0], row[1], row[2]) for row in connection.execute(_COLUMNS)]
        return cls(
            relations=relations,
            columns={(table, name) for table, name, _ in columns},
            nullable={(table, name) for table, name, not_null in columns if not not_null},
            proven_not_null={(row[0], row[1]) for row in connection.execute(_PROVEN_NOT_NULL)},
            validated={row[0]: (row[1], row[2]) for row in connection.execute(_VALIDATED)},
        )

    def tables(self) -> dict[int, str]:
        return {oid: r[0] for oid, r in self.relations.items() if r[1] in ("r", "p", "m")}


@dataclass
class Effects:
    """What one revision did, measured in its own transaction just before it committed."""

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
        effects.created = sorted(set(after.tables().values()) - set(before.tables().values()))
        effects.rewritten = sorted(
            name
            for oid, name in old_tables.items()
            if oid in after.relations and after.relations[oid][2] != before.relations[oid][2]
        )
        effects.validated = [
            {"table": old_tables[table], "constraint": name}
            for oid, (name, table) in after.validated.items()
            if oid not in before.validated and table in old_tables
        ]
        effects.not_null = [
            {"table": old_tables[table], "column": column}
            for table, column in sorted(before.nullable - after.nullable)
            if table in old_tables
            and (table, column) in after.columns
            and (table, column) not in before.proven_not_null
        ]
        effects.indexes = [
            # Built inside the revision's transaction: it still holds the table's SHARE lock
            # (CONCURRENTLY takes SHARE UPDATE EXCLUSIVE, and only outside a transaction).
            {"table": old_tables[table], "index": name}
            for oid, (name, kind, _, table) in after.relations.items()
            if kind in ("i", "I")
            and oid not in before.relations
            and table in old_tables
            and old_tables[table] not in effects.rewritten  # a rewrite rebuilds its indexes
            and _at_least(effects.locks.get(old_tables[table]), "ShareLock")
        ]
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


def weigh(
    effects: list[Effects],
    sizes: dict[str, tuple[int | None, int]],
    allowances: dict[str, list[str]],
    warn_rows: int,
    error_rows: int,
) -> Report:
    """The findings of measured effects, sized by `sizes` (table: live rows, bytes)."""

    def severity(table: str, ceiling: str = "error") -> str:
        if table not in sizes:
            return "info"  # not on the real database: created by an earlier pending revision
        rows = sizes[table][0]
        level = (
            "warning"
            if rows is None  # unknown: not assumed small
            else "error"
            if rows >= error_rows
            else "warning"
            if rows >= warn_rows
            else "info"
        )
        return min(level, ceiling, key=SEVERITIES.index)

    findings: list[Finding] = []
    notes: list[str] = []
    for measured in effects:

        def add(
            rule: str, table: str, what: str, ceiling: str = "error", blocks: str | None = None
        ) -> None:
            lock = measured.locks.get(table)  # noqa: B023 (used at once, in this iteration)
            rows, size = sizes.get(table, (0, None))
            findings.append(
                Finding(
                    revision=measured.revision,  # noqa: B023
                    rule=rule,
                    table=table,
                    severity=severity(table, ceiling),
                    lock=lock,
                    blocks=blocks or BLOCKS.get(lock or "", "nothing"),
                    rows=rows,
                    bytes=size,
                    what=what,
                    safer=SAFER[rule],
                    allowed=_allows(allowances.get(measured.revision, []), rule, table),  # noqa: B023
                )
            )

        for table in measured.rewritten:
            add("table-rewrite", table, "rewrites the table and its indexes")
        for item in measured.validated:
            add(
                "validated-constraint",
                item["table"],
                f"adds constraint {item['constraint']} validated: scans the table",
            )
        for item in measured.not_null:
            add("set-not-null", item["table"], f"SET NOT NULL on {item['column']}: scans the table")
        for item in measured.indexes:
            add(
                "index-without-concurrently",
                item["table"],
                f"builds index {item['index']} in the transaction",
            )
        for table in measured.changed_rows:
            add(
                "data-change",
                table,
                "changes rows in its transaction: how many depends on the data (the scratch "
                "database has none), at most the table's rows",
                ceiling="warning",  # not measured, so never an error on its own
                blocks="writes to the rows it changes, until it commits",
            )
        explained = {f.table for f in findings if f.revision == measured.revision}
        for table, mode in measured.locks.items():
            if table not in explained and table in sizes and mode in BLOCKS:
                add(
                    "exclusive-lock",
                    table,
                    "changes the catalog only (no rewrite, no scan)",
                    "info",
                )
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
