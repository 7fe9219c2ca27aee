"""Verifying: every downgrade undoes its upgrade (the stairway), and the models match the schema.

A schema snapshot is a map from an object's name in plain words (`index ix_cars_id on cars`)
to its definition, read with SQLAlchemy's inspector; two snapshots compare key by key. Only
the tables whose catalog rows changed since the previous snapshot are read again, so a
stair costs what its revision touched, not the whole schema.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from migrator import run, scratch_database, signals
from migrator import scratch as scratch_process
from migrator.config import Settings
from migrator.errors import MigrationFailed, MigratorError, UsageError, reason
from migrator.logs import log
from migrator.safety import Effects, Recorder
from migrator.scratch import Identity

SYSTEM_SCHEMAS = ("information_schema",)
# How long a measurement at deploy waits for its scratch database's connection.
SCRATCH_PATIENCE_SECONDS = 5.0
Snapshot = dict[str, str]


@dataclass
class Stair:
    """One revision's climb: upgrade, downgrade, compare, upgrade again."""

    revision: str
    message: str
    upgrade: bool | None = None  # None: not reached
    downgrade: bool | None = None
    differences: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    effects: Effects | None = None  # measured on its first upgrade (the safety report)

    def marks(self) -> str:
        words = {True: "✓", False: "✗"}
        marks = [
            f"{name} {words[done]}"
            for name, done in (("upgrade", self.upgrade), ("downgrade", self.downgrade))
            if done is not None
        ]
        return " ".join(marks)

    def problem(self) -> str | None:
        where = f"{self.revision} ({self.message})"
        if self.error is not None:
            return f"{where}: {self.error}"
        if self.differences:
            return (
                f"{where}: the downgrade does not undo the upgrade: {'; '.join(self.differences)}"
            )
        return None


@dataclass
class Report:
    """What `verify` found; `problems` empty means clean."""

    heads: list[str]
    stairs: list[Stair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    models: list[str] | None = None  # None: env.py gives no target_metadata to compare


def stairway(settings: Settings, target: str | None) -> Report:
    """On a scratch database: each revision up, down (schema as before?), up again; then models."""
    scratch = scratch_database.settings_for(settings, "verify")
    _, script = run.alembic_project(scratch)
    heads = script.get_heads()
    if target is None and len(heads) > 1:
        return Report(
            heads=heads,
            problems=[
                f"the migrations have {len(heads)} heads ({', '.join(heads)}): "
                "merge them (alembic merge), or name the heads to verify"
            ],
        )
    _in_order(script, target or "heads")  # an unknown target is a usage error before any work
    with scratch_database.made(settings, scratch, settings.wait_timeout) as configured:
        report: Report = scratch_process.run(scratch, climb, target, forbidden=configured)
    return report


def climb(scratch: Settings, target: str | None) -> Report:
    """The stairway, in the scratch process (migrator.scratch), on the scratch database."""
    config, script = run.alembic_project(scratch)
    report = Report(heads=script.get_heads())
    revisions = _in_order(script, target or "heads")
    engine = create_engine(scratch.connection_url(), poolclass=NullPool)
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        stairs = _Climb(script, revisions, report)
        try:
            # One env.py run for the whole stairway: its steps come from a generator
            # that Alembic pulls one at a time, each committed before the next.
            run.run_env(config, script, stairs.steps, on_version_apply=[stairs.recorder.applied])
        except MigratorError:
            raise
        except Exception as error:
            if signals.stop_requested.is_set():
                raise
            stairs.failed(error)
        if not report.problems:
            report.models = model_differences(config, script)
            report.problems += [f"models: {difference}" for difference in report.models or []]
    engine.dispose()
    return report


class _Climb:
    """Each revision up, down (is the schema as before?), up again, as the steps of one
    env.py run; a snapshot before each upgrade and after each downgrade."""

    def __init__(self, script: ScriptDirectory, revisions: list[Script], report: Report) -> None:
        self.script = script
        self.revisions = revisions
        self.report = report
        self.recorder = Recorder()
        self.stair: Stair | None = None
        self.phase = "upgrade"
        self.started = time.monotonic()

    def steps(self, heads: tuple[str, ...], context: MigrationContext) -> Iterator[Any]:
        connection = context.connection
        assert connection is not None
        # Its rows change with every step; it is the run's, not the project's schema.
        version_table = run.version_table_oid(context)
        latest = Snapshots()
        for revision in self.revisions:
            stair = self.stair = Stair(revision.revision, revision.doc)
            self.started = time.monotonic()
            before = latest = snapshot(connection, version_table, latest)
            measured = len(self.recorder.effects)
            self.phase = "upgrade"
            yield from self.recorder.track(
                self._plan("upgrade", revision.revision, context), context
            )
            stair.effects = (
                self.recorder.effects[measured] if len(self.recorder.effects) > measured else None
            )
            stair.upgrade = True
            self.phase = "downgrade"
            yield from self._plan("downgrade", _below(revision), context)
            latest = snapshot(connection, version_table, before)
            stair.differences = differences(before.flat(), latest.flat())
            stair.downgrade = not stair.differences
            if not stair.downgrade:
                self._done()
                return
            self.phase = "upgrade after the downgrade"
            yield from self._plan("upgrade", revision.revision, context)
            self._done()
        self.stair = None

    def failed(self, error: Exception) -> None:
        """A step raised: the stair in flight says which of its three steps."""
        if self.stair is None:  # before its first step (env.py itself)
            if len(self.report.stairs) >= len(self.revisions):
                raise error
            revision = self.revisions[len(self.report.stairs)]
            self.stair = Stair(revision.revision, revision.doc)
        stair = self.stair
        if self.phase == "upgrade":
            stair.upgrade = False
        elif self.phase == "downgrade":
            stair.downgrade = False
        stair.error = f"{self.phase} raised {reason(error)}"
        self._done()

    def _plan(self, direction: run.Direction, target: str, context: MigrationContext) -> list[Any]:
        return run.plan_steps(self.script, direction, target, run.heads_now(context))

    def _done(self) -> None:
        stair = self.stair
        assert stair is not None
        stair.seconds = round(time.monotonic() - self.started, 3)
        self.report.stairs.append(stair)
        log.info(
            "[%d/%d] %s %s %.2f s",
            len(self.report.stairs),
            len(self.revisions),
            stair.revision,
            stair.marks(),
            stair.seconds,
            extra={"fields": {"event": "verify", **asdict(stair)}},
        )
        problem = stair.problem()
        if problem is not None:
            self.report.problems.append(problem)


def model_differences(config: Config, script: ScriptDirectory) -> list[str] | None:
    """Alembic's autogenerate comparison of env.py's target_metadata with the database."""
    found: list[list[str] | None] = []

    def compare(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        metadata = context.opts.get("target_metadata")
        if metadata is None:
            found.append(None)
        else:
            found.append(
                [describe_model_difference(d) for d in compare_metadata(context, metadata)]
            )
        return []

    run.run_env(config, script, compare, dont_mutate=True)
    return found[0]


# Per table, a hash of every catalog row the snapshot reads (columns with their types,
# defaults and nullability; indexes; constraints): a table whose hash is unchanged since the
# last snapshot is not read again. Enums, sequences and views are read every time.
_TABLE_FINGERPRINTS = text(
    r"""
    SELECT n.nspname AS schema, c.relname AS name, md5(concat_ws('|', c.oid, c.relkind,
        (SELECT string_agg(concat_ws(',', a.attnum, a.attname,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attisdropped,
                    a.attidentity, a.attgenerated, a.attcollation,
                    pg_get_expr(d.adbin, d.adrelid),
                    (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                     FROM pg_enum e WHERE e.enumtypid = a.atttypid)),
                  ';' ORDER BY a.attnum)
         FROM pg_attribute a
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = c.oid AND a.attnum > 0),
        (SELECT string_agg(pg_get_indexdef(i.indexrelid), ';' ORDER BY i.indexrelid)
         FROM pg_index i WHERE i.indrelid = c.oid),
        (SELECT string_agg(concat_ws(',', o.conname, pg_get_constraintdef(o.oid)), ';'
                           ORDER BY o.conname)
         FROM pg_constraint o WHERE o.conrelid = c.oid))) AS fingerprint
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'f') AND c.oid <> :version_table
      AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
    """
)
TableKey = tuple[str, str]  # (schema, table)
# What the inspector does not read: schemas, extensions, functions and procedures (but an
# extension's own), and triggers (but constraint triggers, which the constraints stand for).
_OTHER_OBJECTS = text(
    r"""
    SELECT 'schema ' || nspname AS name, 'exists' AS definition FROM pg_namespace
    WHERE nspname NOT IN ('public', 'information_schema') AND nspname NOT LIKE 'pg\_%'
    UNION ALL
    SELECT 'extension ' || extname, extversion FROM pg_extension WHERE extname <> 'plpgsql'
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure, md5(pg_get_functiondef(p.oid))
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE n.nspname NOT IN ('information_schema') AND n.nspname NOT LIKE 'pg\_%'
      AND p.prokind IN ('f', 'p')
      AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'e')
    UNION ALL
    SELECT 'trigger ' || t.tgname || ' on ' || t.tgrelid::regclass, pg_get_triggerdef(t.oid)
    FROM pg_trigger t WHERE NOT t.tgisinternal
    """
)


@dataclass
class Snapshots:
    """A snapshot kept by table, with each table's catalog fingerprint, so the next one can
    reuse what did not change."""

    fingerprints: dict[TableKey, str] = field(default_factory=dict)
    tables: dict[TableKey, Snapshot] = field(default_factory=dict)
    rest: Snapshot = field(default_factory=dict)  # enums, sequences, views

    def flat(self) -> Snapshot:
        objects = dict(self.rest)
        for section in self.tables.values():
            objects.update(section)
        return objects


def snapshot(
    connection: Connection, version_table: int, previous: Snapshots | None = None
) -> Snapshots:
    """Tables (but the version table, by its oid), columns, keys, indexes, constraints, enums,
    sequences and views; a table whose catalog rows are as in `previous` is taken from it
    instead of being read again."""
    previous = previous or Snapshots()
    current = Snapshots()
    for row in connection.execute(_TABLE_FINGERPRINTS, {"version_table": version_table}):
        current.fingerprints[(row.schema, row.name)] = row.fingerprint
    unchanged = {
        key
        for key, fingerprint in current.fingerprints.items()
        if previous.fingerprints.get(key) == fingerprint and key in previous.tables
    }
    current.tables = {key: previous.tables[key] for key in unchanged}
    inspector = inspect(connection)
    for schema in inspector.get_schema_names():
        if schema in SYSTEM_SCHEMAS or schema.startswith("pg_"):
            continue
        prefix = "" if schema == inspector.default_schema_name else f"{schema}."
        to_read = sorted(
            name for (where, name) in current.fingerprints.keys() - unchanged if where == schema
        )
        if to_read:
            for name, section in _tables(inspector, schema, prefix, to_read).items():
                current.tables[(schema, name)] = section
        for enum in inspector.get_enums(schema=schema):  # type: ignore[attr-defined]
            current.rest[f"enum type {prefix}{enum['name']}"] = str(enum["labels"])
        for sequence in inspector.get_sequence_names(schema=schema):
            current.rest[f"sequence {prefix}{sequence}"] = "exists"
        for view in inspector.get_view_names(schema=schema):
            definition = inspector.get_view_definition(view, schema=schema)
            current.rest[f"view {prefix}{view}"] = " ".join(str(definition).split())
    for row in connection.execute(_OTHER_OBJECTS):
        current.rest[row.name] = row.definition
    return current


def _tables(inspector: Any, schema: str, prefix: str, names: list[str]) -> dict[str, Snapshot]:
    """Each named table's objects, read with the inspector, by table name."""
    only = {"schema": schema, "filter_names": names}
    columns = inspector.get_multi_columns(**only)
    primary_keys = inspector.get_multi_pk_constraint(**only)
    indexes = inspector.get_multi_indexes(**only)
    uniques = inspector.get_multi_unique_constraints(**only)
    checks = inspector.get_multi_check_constraints(**only)
    foreign_keys = inspector.get_multi_foreign_keys(**only)
    sections: dict[str, Snapshot] = {}
    for key in columns:  # never the version table: no fingerprint names it
        name = key[1]
        table = f"{prefix}{name}"
        objects: Snapshot = {f"table {table}": "exists"}
        for column in columns.get(key, []):
            nullable = "NULL" if column["nullable"] else "NOT NULL"
            objects[f"column {table}.{column['name']}"] = (
                f"{column['type']} {nullable} DEFAULT {column['default']}"
            )
        primary_key = primary_keys.get(key)
        if primary_key and primary_key["constrained_columns"]:
            objects[f"primary key {primary_key['name']} on {table}"] = str(
                primary_key["constrained_columns"]
            )
        for index in indexes.get(key, []):
            unique = "unique " if index["unique"] else ""
            what = index.get("expressions") or index["column_names"]
            objects[f"index {index['name']} on {table}"] = f"{unique}{what}"
        for constraint in uniques.get(key, []):
            objects[f"unique constraint {constraint['name']} on {table}"] = str(
                constraint["column_names"]
            )
        for check in checks.get(key, []):
            objects[f"check constraint {check['name']} on {table}"] = check["sqltext"]
        for fk in foreign_keys.get(key, []):
            objects[f"foreign key {fk['name']} on {table}"] = (
                f"{fk['constrained_columns']} -> {fk['referred_table']}"
                f"{fk['referred_columns']} {fk.get('options') or ''}"
            )
        sections[name] = objects
    return sections


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What a downgrade failed to undo, in plain words."""
    found = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before:
            found.append(f"{key} left behind")
        elif key not in after:
            found.append(f"{key} missing (it was there before the upgrade)")
        elif before[key] != after[key]:
            found.append(f"{key} changed: was {before[key]}, now {after[key]}")
    return found


def describe_model_difference(difference: Any) -> str:
    """One entry of Alembic's compare_metadata() in plain words."""
    if isinstance(difference, list):  # modify_* entries come grouped per column
        return "; ".join(describe_model_difference(item) for item in difference)
    kind = difference[0]
    if kind in ("add_table", "remove_table"):
        return f"table {difference[1].name} {_where(kind)}"
    if kind in ("add_column", "remove_column"):
        return f"column {difference[2]}.{difference[3].name} {_where(kind)}"
    if kind in ("add_index", "remove_index"):
        index = difference[1]
        return f"index {index.name} on {index.table.name} {_where(kind)}"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = difference[1]
        return f"constraint {constraint.name} on {constraint.table.name} {_where(kind)}"
    if kind.startswith("modify_"):
        _, _, table, column, _, in_database, in_models = difference
        what = kind.removeprefix("modify_")
        return (
            f"column {table}.{column} {what}: {in_database} in the database, "
            f"{in_models} in the models"
        )
    return str(difference)


def measure(
    settings: Settings,
    heads: tuple[str, ...],
    direction: run.Direction,
    target: str,
    migrated: Identity | None = None,
    made_by: str = "safety",
) -> list[Effects]:
    """On a scratch database brought to `heads` (where the real database is), run the
    revisions to `target` and measure what each one does (migrator.safety). `migrated` is
    the database being migrated, which the scratch must never be (the configured one when
    None). At a deploy the scratch is waited for a few seconds at most: its server is the
    one the run already reached."""
    patience = settings.wait_timeout if migrated is None else SCRATCH_PATIENCE_SECONDS
    scratch = replace(
        scratch_database.settings_for(settings, made_by),
        wait_timeout=min(patience, settings.wait_timeout),
    )
    with scratch_database.made(settings, scratch, scratch.wait_timeout) as configured:
        effects: list[Effects] = scratch_process.run(
            scratch, measure_here, heads, direction, target, forbidden=migrated or configured
        )
    return effects


def measure_here(
    scratch: Settings, heads: tuple[str, ...], direction: run.Direction, target: str
) -> list[Effects]:
    """The measurement, in the scratch process (migrator.scratch), on the scratch database."""
    config, script = run.alembic_project(scratch)
    recorder = Recorder()
    engine = create_engine(scratch.connection_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            for head in heads:
                run.step(config, script, "upgrade", head)
            run.step(config, script, direction, target, recorder)
    except MigratorError:
        raise
    except Exception as error:
        if signals.stop_requested.is_set():
            raise
        raise MigrationFailed(
            f"measuring on the scratch database: {recorder.in_flight()} failed: {reason(error)}"
        ) from None
    finally:
        engine.dispose()
    return recorder.effects


def _in_order(script: ScriptDirectory, target: str) -> list[Script]:
    """The revisions from base up to `target`, each after the ones it depends on."""
    try:
        return [rev for rev in reversed(list(script.iterate_revisions(target, "base"))) if rev]
    except Exception as error:
        raise UsageError(run.describe_resolution_error(script, target, error)) from None


def _below(revision: Script) -> str:
    # `rev@-1` steps down that revision alone, leaving any other branch where it is.
    return f"{revision.revision}@-1"


def _where(kind: str) -> str:
    if kind.startswith("add"):
        return "is in the models but not in the database"
    return "is in the database but not in the models"
