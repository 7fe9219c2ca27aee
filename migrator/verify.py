"""Verifying: every downgrade undoes its upgrade (the stairway), and the models match the schema.

A schema snapshot is a map from an object's name in plain words (`index ix_cars_id on cars`)
to its definition, read with SQLAlchemy's inspector; two snapshots compare key by key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from migrator import run, signals, wait
from migrator.config import Settings
from migrator.errors import MigrationFailed, MigratorError, UsageError, reason, refusal
from migrator.logs import log
from migrator.safety import Effects, Recorder

VERSION_TABLE = "alembic_version"  # its rows change with every step; it is not the schema
SYSTEM_SCHEMAS = ("information_schema",)
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
    scratch = scratch_settings(settings)
    config, script = run.alembic_project(scratch)
    report = Report(heads=script.get_heads())
    if target is None and len(report.heads) > 1:
        report.problems.append(
            f"the migrations have {len(report.heads)} heads ({', '.join(report.heads)}): "
            "merge them (alembic merge), or name the heads to verify"
        )
        return report
    revisions = _in_order(script, target or "heads")
    with scratch_database(settings, scratch):
        engine = create_engine(scratch.connection_url(), poolclass=NullPool)
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            for position, revision in enumerate(revisions, start=1):
                stair = _climb(config, script, connection, revision)
                report.stairs.append(stair)
                log.info(
                    "[%d/%d] %s %s %.2f s",
                    position,
                    len(revisions),
                    stair.revision,
                    stair.marks(),
                    stair.seconds,
                    extra={"fields": {"event": "verify", **asdict(stair)}},
                )
                problem = stair.problem()
                if problem is not None:
                    report.problems.append(problem)
                    return report
            report.models = model_differences(config, script)
            report.problems += [f"models: {difference}" for difference in report.models or []]
        engine.dispose()
    return report


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


def snapshot(connection: Connection) -> Snapshot:
    """Tables, columns, keys, indexes, constraints, enums, sequences and views."""
    inspector = inspect(connection)
    objects: Snapshot = {}
    for schema in inspector.get_schema_names():
        if schema in SYSTEM_SCHEMAS or schema.startswith("pg_"):
            continue
        prefix = "" if schema == inspector.default_schema_name else f"{schema}."
        columns = inspector.get_multi_columns(schema=schema)
        tables = {key: f"{prefix}{key[1]}" for key in columns if key[1] != VERSION_TABLE}
        primary_keys = inspector.get_multi_pk_constraint(schema=schema)
        indexes = inspector.get_multi_indexes(schema=schema)
        uniques = inspector.get_multi_unique_constraints(schema=schema)
        checks = inspector.get_multi_check_constraints(schema=schema)
        foreign_keys = inspector.get_multi_foreign_keys(schema=schema)
        for key, table in tables.items():
            objects[f"table {table}"] = "exists"
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
        for enum in inspector.get_enums(schema=schema):  # type: ignore[attr-defined]
            objects[f"enum type {prefix}{enum['name']}"] = str(enum["labels"])
        for sequence in inspector.get_sequence_names(schema=schema):
            objects[f"sequence {prefix}{sequence}"] = "exists"
        for view in inspector.get_view_names(schema=schema):
            definition = inspector.get_view_definition(view, schema=schema)
            objects[f"view {prefix}{view}"] = " ".join(str(definition).split())
    connection.rollback()  # hold no snapshot open while migrations run
    return objects


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


@contextmanager
def scratch_database(settings: Settings, scratch: Settings) -> Iterator[None]:
    """The scratch database: created for the run and always dropped after it, on the server
    the configuration names; or MIGRATOR_VERIFY_URL's, which is neither created nor dropped."""
    if settings.verify_url is not None:
        yield
        return
    assert scratch.database_url is not None
    name = scratch.database_url.database
    engine = create_engine(
        settings.connection_url(), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    with wait.connect(engine, settings.wait_timeout) as connection:
        try:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        except DBAPIError as error:
            raise refusal(error) or UsageError(
                f"cannot create a scratch database: {reason(error)}"
            ) from None
    log.info("scratch database %s created", name)
    try:
        yield
    finally:
        # Also after SIGTERM: this connection is exempt from the stop.
        with signals.cleanup_connection(engine) as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
        log.info("scratch database %s dropped", name)


def scratch_settings(settings: Settings) -> Settings:
    """The settings with MIGRATOR_VERIFY_URL's database, or a new scratch database's name."""
    return replace(settings, database_url=settings.verify_url or _scratch_url(settings))


def measure(
    settings: Settings, heads: tuple[str, ...], direction: run.Direction, target: str
) -> list[Effects]:
    """On a scratch database brought to `heads` (where the real database is), run the
    revisions to `target` and measure what each one does (migrator.safety)."""
    scratch = scratch_settings(settings)
    config, script = run.alembic_project(scratch)
    recorder = Recorder()
    with scratch_database(settings, scratch):
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


def _scratch_url(settings: Settings) -> URL:
    if settings.database_url is None:
        settings.connection_url()  # raises: no database configured
    assert settings.database_url is not None
    return settings.database_url.set(database=f"migrator_verify_{uuid.uuid4().hex[:12]}")


def _climb(
    config: Config, script: ScriptDirectory, connection: Connection, revision: Script
) -> Stair:
    stair = Stair(revision.revision, revision.doc)
    started = time.monotonic()
    before = snapshot(connection)
    recorder = Recorder()
    try:
        run.step(config, script, "upgrade", revision.revision, recorder)
        stair.effects = recorder.effects[0] if recorder.effects else None
        stair.upgrade = True
        run.step(config, script, "downgrade", _below(revision))
        stair.differences = differences(before, snapshot(connection))
        stair.downgrade = not stair.differences
        if stair.downgrade:
            run.step(config, script, "upgrade", revision.revision)
    except MigratorError:
        raise
    except Exception as error:
        if signals.stop_requested.is_set():
            raise
        if stair.upgrade is None:
            stair.upgrade, phase = False, "upgrade"
        elif stair.downgrade is None:
            stair.downgrade, phase = False, "downgrade"
        else:
            phase = "upgrade after the downgrade"
        stair.error = f"{phase} raised {reason(error)}"
    stair.seconds = round(time.monotonic() - started, 3)
    return stair


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
