"""Verifying: every downgrade undoes its upgrade (the stairway), and the models match the schema.

A schema snapshot is a map from an object's name in plain words (`index ix_cars_id on cars`)
to its definition, read from PostgreSQL's catalogs in one statement (what pg_get_indexdef,
pg_get_constraintdef and their kin print); two snapshots compare key by key. One round trip
per snapshot: a stairway takes two per revision, so their count, not their size, is the cost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext, MigrationStep, RevisionStep
from alembic.script import Script, ScriptDirectory
from sqlalchemy import Enum, MetaData, create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from migrator import ledger, phases, run, scratch_database, signals
from migrator import scratch as scratch_process
from migrator.catalog import user_schema
from migrator.config import Settings
from migrator.errors import MigrationFailed, MigratorError, UsageError, reason
from migrator.logs import log
from migrator.safety import Effects, Recorder
from migrator.scratch import Identity

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
    if target is None and len(heads) > 1 and not phases.two_phase_heads(script):
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
        if heads:  # MIGRATOR_VERIFY_URL's database, left at head by an earlier run
            raise UsageError(
                f"the verify database is at {run.heads_name(heads)}, not base: the stairway "
                "climbs from an empty database"
            )
        # Its rows change with every step; it is the run's, not the project's schema.
        version_table = run.version_table_oid(context)
        for revision in self.revisions:
            stair = self.stair = Stair(revision.revision, revision.doc)
            self.started = time.monotonic()
            before = snapshot(connection, version_table)
            measured = len(self.recorder.effects)
            self.phase = "upgrade"
            yield from self.recorder.track([self._step(revision, upgrade=True)], context)
            stair.effects = (
                self.recorder.effects[measured] if len(self.recorder.effects) > measured else None
            )
            stair.upgrade = True
            self.phase = "downgrade"
            yield self._step(revision, upgrade=False)
            stair.differences = differences(before, snapshot(connection, version_table))
            stair.downgrade = not stair.differences
            if not stair.downgrade:
                self._done()
                return
            self.phase = "upgrade after the downgrade"
            yield self._step(revision, upgrade=True)
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

    def _step(self, revision: Script, upgrade: bool) -> RevisionStep:
        # From base, in `_in_order`'s order, every revision below this one is applied and none
        # above it: its upgrade and its downgrade are each that one step, the one Alembic's
        # own planning gives (ScriptDirectory._upgrade_revs builds it so), without walking
        # the revision graph and reading the version table for each of the 3 per revision.
        if upgrade:
            return MigrationStep.upgrade_from_script(self.script.revision_map, revision)
        return MigrationStep.downgrade_from_script(self.script.revision_map, revision)

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
    """Alembic's autogenerate comparison of env.py's target_metadata with the database, with
    server defaults; then the labels of the models' named enum types, which it leaves out."""
    found: list[list[str] | None] = []

    def compare(heads: tuple[str, ...], context: MigrationContext) -> list[Any]:
        metadata = context.opts.get("target_metadata")
        if metadata is None:
            found.append(None)
            return []
        # Alembic compares server defaults only when asked (env.py's option serves
        # `revision --autogenerate`, off by default there); a comparator env.py gives is used.
        asked = context.opts.get("compare_server_default")
        given = context.opts.get("include_object")

        def include(object_: Any, name: str | None, type_: str, *rest: Any) -> bool:
            # The migrator's own ledger is not the models' business, whatever env.py says.
            if type_ == "table" and name == ledger.TABLE_NAME:
                return False
            return given is None or bool(given(object_, name, type_, *rest))

        opts = {**context.opts, "compare_server_default": asked or True, "include_object": include}
        comparing = MigrationContext.configure(context.connection, opts=opts)
        assert context.connection is not None
        found.append(
            [describe_model_difference(d) for d in compare_metadata(comparing, metadata)]
            + enum_label_differences(context.connection, metadata)
        )
        return []

    run.run_env(config, script, compare, dont_mutate=True)
    return found[0]


_ENUM_LABELS = text(
    """
    SELECT n.nspname AS schema, t.typname AS name,
           array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
    JOIN pg_enum e ON e.enumtypid = t.oid
    GROUP BY n.nspname, t.typname
    """
)


def enum_label_differences(connection: Connection, metadata: MetaData) -> list[str]:
    """Each named enum type of the models whose labels (or their order) differ from its
    type's in the database; a type the database lacks is left to the column comparison."""
    here = connection.execute(text("SELECT current_schema()")).scalar_one()
    in_database = {
        (row.schema, row.name): list(row.labels) for row in connection.execute(_ENUM_LABELS)
    }
    in_models: dict[tuple[str, str], list[str]] = {}
    for table in metadata.tables.values():
        for column in table.columns:
            kind = column.type
            if isinstance(kind, Enum) and kind.name and kind.native_enum:
                in_models[(kind.schema or table.schema or here, kind.name)] = list(kind.enums)
    found = []
    for (schema, name), labels in sorted(in_models.items()):
        database_labels = in_database.get((schema, name))
        if database_labels is not None and database_labels != labels:
            where = "" if schema == here else f"{schema}."
            found.append(
                f"enum type {where}{name} labels: {', '.join(database_labels)} in the "
                f"database, {', '.join(labels)} in the models"
            )
    return found


# The snapshot is one statement (one round trip, however many objects): a UNION ALL of the
# parts below, each (name, definition) rows for one kind of object. Two CTEs say once what is
# the project's: `ns`, every schema but the system ones, with the prefix a name takes in the
# report (none in the current schema); `rel`, the relations there (tables, views, materialized
# views, sequences) but the run's version table, whose rows change with every step.
# `oid >= 16384` (FirstNormalObjectId: every object made after initdb has an oid from there)
# leaves out the built-in functions and their descriptions by index, not by a scan of each.
_PROJECT = (
    r"""
    ns AS (
        SELECT oid, nspname,
               CASE WHEN nspname = current_schema() THEN '' ELSE nspname || '.' END AS prefix
        FROM pg_namespace
        WHERE """
    + user_schema("nspname")
    + r"""
    ),
    rel AS (
        SELECT c.oid, c.relkind, c.relpersistence, c.relowner, c.relacl, c.reloptions,
               c.relrowsecurity, c.relforcerowsecurity, ns.prefix || c.relname AS name,
               CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                              WHEN 'S' THEN 'sequence' ELSE 'table' END AS kind
        FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S') AND c.oid <> :version_table
    )
"""
)
_PARTS = {
    # A table's persistence (UNLOGGED) and partition key; a view's query; a sequence's
    # parameters (ALTER SEQUENCE).
    "relations": r"""
        SELECT r.kind || ' ' || r.name,
               CASE WHEN r.relkind IN ('v', 'm')
                    THEN trim(regexp_replace(pg_get_viewdef(r.oid), '\s+', ' ', 'g'))
                    WHEN r.relkind = 'S'
                    THEN concat_ws(', ', format_type(s.seqtypid, NULL),
                                   'increment ' || s.seqincrement, 'minimum ' || s.seqmin,
                                   'maximum ' || s.seqmax, 'start ' || s.seqstart,
                                   'cache ' || s.seqcache, CASE WHEN s.seqcycle THEN 'cycle' END,
                                   CASE WHEN r.relpersistence = 'u' THEN 'unlogged' END)
                    ELSE concat_ws(', ',
                                   CASE r.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'logged' END,
                                   'partitioned by ' || pg_get_partkeydef(r.oid))
               END
        FROM rel r LEFT JOIN pg_sequence s ON s.seqrelid = r.oid
    """,
    "columns": r"""
        SELECT 'column ' || r.name || '.' || a.attname,
               concat_ws(' ', format_type(a.atttypid, a.atttypmod),
                         CASE WHEN a.attnotnull THEN 'NOT NULL' ELSE 'NULL' END,
                         CASE WHEN a.attgenerated = 's'
                              THEN 'GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid)
                                   || ') STORED'
                              ELSE 'DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) END,
                         CASE a.attidentity WHEN 'a' THEN 'GENERATED ALWAYS AS IDENTITY'
                                            WHEN 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY' END,
                         CASE WHEN a.attcollation <> t.typcollation
                              THEN 'COLLATE ' || (SELECT collname FROM pg_collation
                                                  WHERE oid = a.attcollation) END)
        FROM rel r
        JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE r.relkind IN ('r', 'p', 'f')
    """,
    "constraints": r"""
        SELECT CASE o.contype WHEN 'p' THEN 'primary key ' WHEN 'u' THEN 'unique constraint '
                              WHEN 'c' THEN 'check constraint ' WHEN 'f' THEN 'foreign key '
                              ELSE 'exclusion constraint ' END || o.conname || ' on ' || r.name,
               pg_get_constraintdef(o.oid)
        FROM rel r JOIN pg_constraint o ON o.conrelid = r.oid
        WHERE o.contype IN ('p', 'u', 'c', 'f', 'x')
    """,
    # Its whole definition: columns, DESC, method, predicate, INCLUDE, storage parameters.
    # Not the index of a constraint, which the constraint stands for.
    "indexes": r"""
        SELECT 'index ' || c.relname || ' on ' || r.name, pg_get_indexdef(i.indexrelid)
        FROM rel r JOIN pg_index i ON i.indrelid = r.oid JOIN pg_class c ON c.oid = i.indexrelid
        WHERE NOT EXISTS (SELECT FROM pg_constraint o WHERE o.conindid = i.indexrelid
                          AND o.conrelid = r.oid AND o.contype IN ('p', 'u', 'x'))
    """,
    # But constraint triggers, which the constraints stand for.
    "triggers": r"""
        SELECT 'trigger ' || t.tgname || ' on ' || r.name, pg_get_triggerdef(t.oid)
        FROM rel r JOIN pg_trigger t ON t.tgrelid = r.oid WHERE NOT t.tgisinternal
    """,
    "row level security": r"""
        SELECT 'row level security on ' || r.name,
               concat_ws(', ', CASE WHEN r.relrowsecurity THEN 'enabled' END,
                         CASE WHEN r.relforcerowsecurity THEN 'forced' END)
        FROM rel r WHERE r.relrowsecurity OR r.relforcerowsecurity
    """,
    "policies": r"""
        SELECT 'policy ' || p.polname || ' on ' || r.name,
               concat_ws(' ', CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END,
                         'for ' || CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                                          WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE'
                                          ELSE 'ALL' END,
                         'to ' || (SELECT string_agg(CASE WHEN role = 0 THEN 'PUBLIC'
                                                          ELSE pg_get_userbyid(role) END, ', ')
                                   FROM unnest(p.polroles) role),
                         'using ' || pg_get_expr(p.polqual, p.polrelid),
                         'with check ' || pg_get_expr(p.polwithcheck, p.polrelid))
        FROM rel r JOIN pg_policy p ON p.polrelid = r.oid
    """,
    "storage parameters": r"""
        SELECT 'storage parameter ' || split_part(o, '=', 1) || ' on ' || r.name,
               substr(o, strpos(o, '=') + 1)
        FROM rel r CROSS JOIN LATERAL unnest(r.reloptions) o
    """,
    # What the owner granted to others, per grantee (the owner's own rights are implied).
    "grants": r"""
        SELECT 'grant on ' || r.name || ' to '
               || CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee) END,
               string_agg(g.privilege_type || CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION'
                                                   ELSE '' END, ', ' ORDER BY g.privilege_type)
        FROM rel r CROSS JOIN LATERAL aclexplode(r.relacl) g
        WHERE g.grantee <> r.relowner
        GROUP BY r.name, g.grantee
    """,
    "comments": r"""
        SELECT 'comment on ' || CASE WHEN d.objsubid = 0 THEN r.kind || ' ' || r.name
                                     ELSE 'column ' || r.name || '.' || a.attname END,
               d.description
        FROM rel r
        JOIN pg_description d ON d.objoid = r.oid AND d.classoid = 'pg_class'::regclass
        LEFT JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum = d.objsubid
        WHERE d.objoid >= 16384
    """,
    "enum types": r"""
        SELECT 'enum type ' || ns.prefix || t.typname,
               coalesce(string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder), '')
        FROM ns JOIN pg_type t ON t.typnamespace = ns.oid
        LEFT JOIN pg_enum e ON e.enumtypid = t.oid
        WHERE t.typtype = 'e'
        GROUP BY ns.prefix, t.typname
    """,
    "schemas": r"""
        SELECT 'schema ' || nspname, 'exists' FROM ns WHERE nspname <> 'public'
    """,
    "extensions": r"""
        SELECT 'extension ' || extname, extversion FROM pg_extension WHERE extname <> 'plpgsql'
    """,
    # Functions and procedures, but an extension's own.
    "functions": r"""
        SELECT 'function ' || p.oid::regprocedure, md5(pg_get_functiondef(p.oid))
        FROM ns JOIN pg_proc p ON p.pronamespace = ns.oid
        WHERE p.oid >= 16384 AND p.prokind IN ('f', 'p')
          AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                          AND d.objid = p.oid AND d.deptype = 'e')
    """,
}
_SNAPSHOT = text(f"WITH {_PROJECT} " + " UNION ALL ".join(f"({part})" for part in _PARTS.values()))


def snapshot(connection: Connection, version_table: int) -> Snapshot:
    """Every object of the project's schemas but the version table (by its oid), by its name
    in plain words (`index ix_cars_id on cars`), with its definition as the catalogs give it."""
    rows = connection.execute(_SNAPSHOT, {"version_table": version_table})
    return {name: definition for name, definition in rows}


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
    if kind == "modify_default":
        _, _, table, column, _, in_database, in_models = difference
        return (
            f"column {table}.{column} server default: {_default(in_database)} in the database, "
            f"{_default(in_models)} in the models"
        )
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


def _default(server_default: Any) -> str:
    """A server default (a DefaultClause, from the models or reflected) as SQL text."""
    if server_default is None:
        return "none"
    given = getattr(server_default, "arg", server_default)
    return str(getattr(given, "text", given))


def _where(kind: str) -> str:
    if kind.startswith("add"):
        return "is in the models but not in the database"
    return "is in the database but not in the models"
