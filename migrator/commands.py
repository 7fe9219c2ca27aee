"""The user's commands, one function each, over the settings and Alembic's own objects."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

from alembic.config import Config
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from tenacity import RetryCallState, retry_if_exception_type, wait_random_exponential

from migrator import errors, fleet, logs, phases, retry, run, signals
from migrator import ledger as deploy_ledger
from migrator import manifest as project_manifest
from migrator import safety as safety_report
from migrator.config import FleetSettings, Settings
from migrator.errors import (
    ConnectionLost,
    DifferenceFound,
    FleetFailed,
    LockLost,
    MigratorError,
    SafetyRefused,
    UsageError,
)
from migrator.job import Command
from migrator.lock import MigrationLock, migration_lock
from migrator.logs import log
from migrator.project_files import revision_checksum
from migrator.run import Direction, State
from migrator.session import Session
from migrator.summary import Summary
from migrator.wait import patient_connections

T = TypeVar("T")
# How the safety report's note on pending revisions it could not weigh begins.
UNWEIGHED = "not weighed"


def upgrade(settings: Settings, summary: Summary, target: str, sql: bool = False) -> None:
    """Wait, lock, upgrade to `target`, one revision per transaction; or, with `sql`, only
    print the SQL (no database needed)."""
    _migrate(settings, "upgrade", target, summary, sql)


def downgrade(settings: Settings, summary: Summary, target: str, sql: bool = False) -> None:
    """Wait, lock, downgrade to `target`, one revision per transaction; or print the SQL."""
    _migrate(settings, "downgrade", target, summary, sql)


def plan(
    settings: Settings,
    summary: Summary,
    direction: Direction,
    target: str,
    as_json: bool = False,
    safety: bool = False,
    as_markdown: bool = False,
) -> None:
    """The revisions an upgrade or downgrade would run, in order; changes nothing. With
    `safety`, what each would lock, rewrite and scan (as measured where the project was
    built), weighed with this database's table sizes."""
    config, script = run.alembic_project(settings)
    phase_target = _phase_target(settings, script, direction, target)
    target = phase_target or target
    run.refuse_unresolvable_target(script, target)
    report = None
    with _database(settings, config) as session:
        state = _inspect(session, config, script, direction, target)
        if phase_target is None:  # no revision in that phase: an empty plan, said as one
            state = replace(state, steps=())
        _accept(state, direction, settings, summary, script)
        if safety:
            measured = _measured_at_deploy(settings, state, direction, target, session)
            report = _safety_report(settings, script, state.steps, session, measured)
    steps = [{"revision": step.revision, "message": step.doc} for step in state.steps]
    if phases.phased(script):
        for step, planned in zip(steps, state.steps, strict=True):
            step["phase"] = phases.phase_of(planned)
    summary.revisions = steps
    source = run.heads_name(state.heads)
    # A plan changes nothing; its summary's `to` is where the plan would take the database.
    summary.to_revision = run.heads_name(_heads_after(state, direction))
    named = target if summary.to_revision == target else f"{summary.to_revision} ({target})"
    lines = [f"{direction} from {source} to {named}: {len(steps)} revision(s)"] + [
        f"  {position}. {step['revision']}  {step['message']}"
        + (f"  [{step['phase']}]" if "phase" in step else "")
        for position, step in enumerate(steps, start=1)
    ]
    payload: dict[str, Any] = {
        "direction": direction,
        "from": list(state.heads),
        "to": target,
        "reaches": sorted(_heads_after(state, direction)),
        "revisions": steps,
    }
    if report is not None:
        payload["safety"] = asdict(report)
        lines += safety_report.text_lines(report)
    if as_markdown:
        print(_plan_markdown(direction, source, named, steps, report))
    else:
        _emit(as_json, payload, lines)
    if report is not None and settings.safety == "block":
        _refuse(report)


def current(settings: Settings, summary: Summary, as_json: bool = False) -> None:
    """The database's revision(s), and whether that is head."""
    config, script = run.alembic_project(settings)
    with _database(settings, config) as session:
        state = _inspect(session, config, script, "upgrade", "heads")
    heads = script.get_heads()
    # Not `state.heads == heads`: a head that a later revision depends on (a phased
    # project's pre head) leaves the version table with that revision's row.
    at_head = not state.unknown and not state.steps
    summary.from_revision = run.heads_name(state.heads)
    if state.unknown:
        where = f"unknown to this project ({', '.join(state.unknown)}: a newer release?)"
    elif at_head:
        where = "head"
    else:
        where = f"not head: {len(state.steps)} revision(s) to apply up to {', '.join(heads)}"
    _emit(
        as_json,
        {
            "current": list(state.heads),
            "heads": heads,
            "at_head": at_head,
            "unknown": list(state.unknown),
            "pending": len(state.steps),
        },
        [f"{run.heads_name(state.heads)} ({where})"],
    )


def history(
    settings: Settings, summary: Summary, as_json: bool = False, ledger: bool = False
) -> None:
    """Every revision, oldest first, marked applied when a database is configured; with
    `ledger`, every row of the deploy ledger: each upgrade, downgrade, stamp, acceptance and
    failure, with when, how long and by which deploy."""
    config, script = run.alembic_project(settings)
    if ledger:
        _ledger_history(settings, config, script, as_json)
        return
    applied: set[str] | None = None
    recorded: dict[str, deploy_ledger.Entry] = {}
    if settings.database_url is not None:
        with _database(settings, config) as session:
            state = _inspect(session, config, script, "upgrade", "heads")
            ledger_table = _recorder(settings, script, state).table
            if deploy_ledger.exists(_connected(session), ledger_table):
                recorded = deploy_ledger.entries(session.connection, ledger_table)
        applied = {rev.revision for rev in script.iterate_revisions(state.heads, "base") if rev}
    revisions = list(reversed(list(script.walk_revisions())))
    script_heads = script.get_heads()
    entries: list[dict[str, Any]] = [
        {
            "revision": rev.revision,
            "down_revision": rev.down_revision,
            "message": rev.doc,
            "head": rev.revision in script_heads,
            "applied": None if applied is None else rev.revision in applied,
            "ledger": _ledger_fields(recorded.get(rev.revision)),
        }
        for rev in revisions
    ]
    marks = {None: "", True: "applied  ", False: "pending  "}
    _emit(
        as_json,
        entries,
        [
            f"{marks[entry['applied']]}{entry['revision']}  {entry['message']}"
            + (" (head)" if entry["head"] else "")
            + _ledger_text(entry["ledger"])
            for entry in entries
        ],
    )


def _ledger_fields(entry: deploy_ledger.Entry | None) -> dict[str, Any] | None:
    """When an applied revision's newest ledger row says it got there, how long, by whom."""
    if entry is None:
        return None
    return {
        "outcome": entry.outcome,
        "finished_at": entry.finished_at.astimezone(UTC).isoformat(),
        "seconds": round(entry.seconds, 3),
        "deploy": entry.deploy,
    }


def _ledger_text(fields: dict[str, Any] | None) -> str:
    if fields is None:
        return ""
    when = fields["finished_at"][:19].replace("T", " ")
    by = f" by {fields['deploy']}" if fields["deploy"] else ""
    return f"  [{fields['outcome']} {when}Z in {fields['seconds']:.3f} s{by}]"


def _ledger_history(
    settings: Settings, config: Config, script: ScriptDirectory, as_json: bool
) -> None:
    with _database(settings, config) as session:
        state = _inspect(session, config, script, "upgrade", "heads")
        recorder = _recorder(settings, script, state)
        found = deploy_ledger.exists(_connected(session), recorder.table)
        rows = deploy_ledger.history(session.connection, recorder.table) if found else []
    if not found:
        log.info("no deploy ledger yet: the migrator's first upgrade creates it")
    columns = ("when", "revision", "direction", "outcome", "seconds", "deploy", "host")
    lines = ["  ".join(columns)] + [
        f"{row['finished_at'].astimezone(UTC):%Y-%m-%d %H:%M:%S}Z  {row['revision']}  "
        f"{row['direction']}  {row['outcome']}  {row['seconds']:.3f}  "
        f"{row['deploy'] or '-'}  {row['host']}" + (f"  {row['detail']}" if row["detail"] else "")
        for row in rows
    ]
    _emit(as_json, [_json_row(row) for row in rows], lines)


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value.isoformat() if hasattr(value, "isoformat") else value
        for key, value in row.items()
    }


def verify(
    settings: Settings, summary: Summary, target: str | None = None, as_json: bool = False
) -> None:
    """On a scratch database: one head; every downgrade undoes its upgrade; models match.
    What each revision measurably did is recorded in the manifest, for the deploys' safety
    report."""
    # Imported here, not at the top: a deploy's upgrade should not pay for autogenerate.
    from migrator.verify import stairway

    report = stairway(settings, target)
    recorded = _record_effects(settings, [s.effects for s in report.stairs if s.effects])
    models = "models match" if report.models is not None else "no models to compare"
    _emit(
        as_json,
        {
            "ok": not report.problems,
            "heads": report.heads,
            "stairs": [asdict(stair) for stair in report.stairs],
            "models": report.models,
            "problems": report.problems,
        },
        ["verify found problems:", *(f"  - {problem}" for problem in report.problems)]
        if report.problems
        else [
            f"verified: {len(report.stairs)} revision(s) up, down and up again; {models}"
            + (f"; their measured effects recorded in {recorded}" if recorded else "")
        ],
    )
    summary.applied = len(report.stairs)
    summary.from_revision = "base"  # the stairway climbs from base, on the scratch database
    summary.to_revision = run.heads_name(tuple(report.heads)) if not report.problems else None
    if report.problems:
        raise DifferenceFound(f"verify: {report.problems[0]}")


def _record_effects(settings: Settings, effects: list[safety_report.Effects]) -> Path | None:
    """Record measured effects in the manifest, by revision and its file's hash; a project
    directory the migrator cannot write to is said in a warning (measuring was not the
    command's only work)."""
    if not effects:
        return None
    _, script = run.alembic_project(settings)
    measured = {
        found.revision: {
            "file": project_manifest.revision_hash(script.get_revision(found.revision).path),
            "effects": asdict(found),
        }
        for found in effects
    }
    try:
        return project_manifest.record_effects(
            settings.alembic_ini, settings.schema or "public", measured
        )
    except MigratorError as error:
        log.warning("measured effects not recorded: %s", error)
        return None


def check(settings: Settings, summary: Summary, as_json: bool = False) -> None:
    """Without changing the database: is it at head, and do the models match its schema?"""
    from migrator.verify import model_differences

    config, script = run.alembic_project(settings)
    with _database(settings, config) as session:
        state = _inspect(session, config, script, "upgrade", "heads")
        at_head = not state.unknown and not state.steps
        # Like `alembic check`: models are compared only with a database at head.
        models = model_differences(config, script) if at_head else None
    summary.from_revision = summary.to_revision = run.heads_name(state.heads)
    problems = []
    if state.unknown:
        problems.append(f"the database is at {', '.join(state.unknown)}, unknown to this project")
    elif state.steps:
        problems.append(
            f"the database is at {run.heads_name(state.heads)}, not head: "
            f"{len(state.steps)} revision(s) to apply"
        )
    problems += [f"models: {difference}" for difference in models or []]
    compared = "models match" if models is not None else "no models to compare"
    _emit(
        as_json,
        {
            "ok": not problems,
            "current": list(state.heads),
            "heads": script.get_heads(),
            "models": models,
            "problems": problems,
        },
        problems or [f"{run.heads_name(state.heads)} (head); {compared}"],
    )
    if problems:
        raise DifferenceFound(f"check: {problems[0]}")


def manifest(settings: Settings, summary: Summary, measure: bool = False) -> None:
    """Write the project's manifest beside alembic.ini (at image build time), so that a
    no-op deploy is answered without importing SQLAlchemy or Alembic; no database needed.
    With `measure`, each revision's effects are measured on a scratch database on the
    configured server and recorded too (as `verify` does)."""
    if measure:
        from migrator.verify import measure as measure_upgrades

        effects = measure_upgrades(settings, (), "upgrade", "heads", made_by="manifest")
        _record_effects(settings, effects)
    config, script = run.alembic_project(settings)
    loaded = set(sys.modules)
    name, schema = run.version_table(config, script)
    # The project's own modules env.py imported may decide the version table: hashed too.
    imported = _project_modules_since(loaded)
    base = settings.alembic_ini.parent
    directories = [Path(script.dir), *run.version_directories(script)]
    hashed = [directory.resolve() for directory in directories]  # whole, already
    files = [path for path in imported if not any(map(path.is_relative_to, hashed))]
    written = project_manifest.write(
        settings.alembic_ini,
        [os.path.relpath(directory, base) for directory in directories],
        [os.path.relpath(path, base) for path in files],
        list(script.get_heads()),
        name,
        schema,
        {rev.revision: revision_checksum(rev.path) for rev in script.walk_revisions()},
    )
    print(f"wrote {written}: heads {', '.join(script.get_heads())}, version table {name}")


def _project_modules_since(loaded: set[str]) -> list[Path]:
    """The files of the project's own modules imported since `loaded` was taken."""
    new = [module for key, module in list(sys.modules.items()) if key not in loaded]
    names = [str(getattr(module, "__file__", None) or "") for module in new]
    return [Path(name).resolve() for name in names if name and errors.project_source(name)]


def wait(settings: Settings, summary: Summary) -> None:
    """Only wait until the database accepts connections (an init container's job)."""
    with _database(settings):
        pass


def fleet_upgrade(
    settings: Settings,
    summary: Summary,
    fleet_settings: FleetSettings,
    target: str,
    as_json: bool = False,
    canary_only: bool = False,
) -> None:
    """Upgrade every target of MIGRATOR_FLEET_FILE to `target`, a few at a time, each as its
    own run; with `canary_only`, only the first MIGRATOR_FLEET_CANARY (a Job before the
    fleet's)."""
    each = Command("upgrade", upgrade, {"target": target})
    _fleet(settings, summary, fleet_settings, each, target, as_json, canary_only)


def fleet_downgrade(
    settings: Settings,
    summary: Summary,
    fleet_settings: FleetSettings,
    target: str,
    as_json: bool = False,
) -> None:
    """Downgrade every target of MIGRATOR_FLEET_FILE to `target`."""
    each = Command("downgrade", downgrade, {"target": target})
    _fleet(settings, summary, fleet_settings, each, target, as_json)


def fleet_current(
    settings: Settings, summary: Summary, fleet_settings: FleetSettings, as_json: bool = False
) -> None:
    """Each target's revision, and whether it is head."""
    _fleet(settings, summary, fleet_settings, Command("current", current), None, as_json)


def fleet_plan(
    settings: Settings,
    summary: Summary,
    fleet_settings: FleetSettings,
    direction: Direction,
    target: str,
    as_json: bool = False,
) -> None:
    """The revisions an upgrade or downgrade would run on each target; changes nothing."""
    each = Command("plan", plan, {"direction": direction, "target": target})
    _fleet(settings, summary, fleet_settings, each, None, as_json)


def _fleet(
    settings: Settings,
    summary: Summary,
    fleet_settings: FleetSettings,
    each: Command,
    target: str | None,
    as_json: bool,
    canary_only: bool = False,
) -> None:
    """`each` on every target of this pod's share (with `canary_only`, on the canaries),
    as a run of its own; the targets' outcomes on stdout, counted in the summary. `target`:
    the revision every target ends at, when the command names one."""
    summary.command = f"fleet-{each.name}"
    targets = _fleet_targets(settings, fleet_settings, canary_only)
    config, script = run.alembic_project(settings)
    wanted = None
    if target is not None:  # each target's run resolves the phase too
        direction: Direction = "downgrade" if each.name == "downgrade" else "upgrade"
        phase_target = _phase_target(settings, script, direction, target)
        wanted = _fleet_wanted(config, script, phase_target) if phase_target else None
    shared = f" (share {fleet_settings.shard} of {fleet_settings.shards})"
    log.info(
        "fleet %s: %d target(s), %d at a time%s",
        " ".join([each.name, *each.options.values()]),
        len(targets),
        fleet_settings.parallelism,
        shared if fleet_settings.shards > 1 else "",
    )
    outcomes = fleet.run(settings, fleet_settings, targets, each, wanted)
    summary.fleet = fleet.counts(outcomes)
    _fleet_report(outcomes, as_json)
    _fleet_judge(outcomes, summary.fleet)


def _fleet_wanted(config: Config, script: ScriptDirectory, target: str) -> fleet.Wanted | None:
    """Where every target ends, as the fleet's look finds a target already there: None when
    that is not one set of revisions (a relative target)."""
    run.refuse_unresolvable_target(script, target)
    revisions = run.revisions_at(script, target)
    if revisions is None:
        return None
    applied = script.iterate_revisions(revisions, "base")
    checksums = {found.revision: revision_checksum(found.path) for found in applied if found}
    return fleet.Wanted(revisions, run.version_table(config, script), checksums)


def _fleet_targets(
    settings: Settings, fleet_settings: FleetSettings, canary_only: bool
) -> list[fleet.Target]:
    """The targets this run migrates: this pod's share, or with `canary_only` the canaries."""
    if canary_only and fleet_settings.canary == 0:
        raise UsageError("--canary-only: set MIGRATOR_FLEET_CANARY to the number of canaries")
    targets = fleet.read_targets(fleet_settings, settings)
    if canary_only:
        return targets[: fleet_settings.canary]
    return fleet.share(targets, fleet_settings)


def _fleet_report(outcomes: list[fleet.Outcome], as_json: bool) -> None:
    """One line per target on stdout, with its run's own output indented below; or JSON."""
    if as_json:
        print(json.dumps({"targets": [_fleet_entry(outcome) for outcome in outcomes]}))
        return
    for outcome in outcomes:
        print(
            f"{outcome.target.name}: {outcome.status} "
            f"({outcome.from_revision or '-'} -> {outcome.to_revision or '-'}, "
            f"{outcome.applied} applied, {outcome.seconds:.2f} s)"
        )
        print("".join(f"  {line}\n" for line in outcome.output.splitlines()), end="")


def _fleet_judge(outcomes: list[fleet.Outcome], counted: dict[str, int]) -> None:
    """The fleet's own status: interrupted when it was stopped; else the first failed
    target's."""
    if signals.stop_requested.is_set():
        # A target killed after the grace period (137) is in the report, not the fleet's
        # exit status.
        raise signals.interrupted(
            f"; fleet: {counted['failed']} target(s) failed or interrupted, "
            f"{counted['skipped']} skipped"
        )
    status = fleet.exit_status(outcomes)
    if status:
        raise FleetFailed(
            f"fleet: {counted['failed']} target(s) failed, "
            f"{counted['skipped']} skipped; exit status of the first failed: {status}",
            status,
        )


def _fleet_entry(outcome: fleet.Outcome) -> dict[str, Any]:
    entry = outcome.fields()
    if outcome.revisions:
        entry["revisions"] = outcome.revisions
    if outcome.ledger is not None:
        entry["ledger"] = outcome.ledger
    return entry


def _migrate(
    settings: Settings, direction: Direction, target: str, summary: Summary, sql: bool
) -> None:
    config, script = run.alembic_project(settings)
    phase_target = _phase_target(settings, script, direction, target)
    if phase_target is None:
        return
    target = phase_target
    if sql:
        run.write_sql(config, script, direction, target)
        return
    run.refuse_unresolvable_target(script, target)
    migration = _Migration(settings, summary, config, script, direction, target)
    with _database(settings, config, writable=True) as session:
        # Look, lock, look again: a run with nothing to do never waits on the lock.
        state = _pending(migration, session)
        recorder = _recorder(settings, script, state)
        # Every run, before anything is applied: has an applied revision's file changed?
        seen = deploy_ledger.look(_connected(session), recorder, _known_heads(state))
        deploy_ledger.judge(seen, settings.on_changed_revision)
        if not state.steps:
            if not seen.complete:  # the first run since the ledger: adopt, under the lock
                with _ledger_settled(session, script, state, recorder):
                    pass
        elif _run_locked(migration, session, state, recorder):
            log.info("%s done: at %s", direction, summary.to_revision)
        _note_ledger(summary, session, recorder)


@dataclass(frozen=True)
class _Migration:
    """An upgrade or downgrade as asked, and what its steps share."""

    settings: Settings
    summary: Summary
    config: Config
    script: ScriptDirectory
    direction: Direction
    target: str

    def accept(self, state: State) -> None:
        _accept(state, self.direction, self.settings, self.summary, self.script)

    def look_again(self, session: Session, state: State) -> State:
        """Where the database is now, read on the run's session (no env.py run)."""
        return run.look_again(session.connection, self.script, state, self.direction, self.target)


def _pending(migration: _Migration, session: Session) -> State:
    """Where the database is before the lock, and what it would take to reach the target."""
    session.idle = True  # env.py's own connection may take its place (a small pool)
    state = _inspect(
        session, migration.config, migration.script, migration.direction, migration.target
    )
    session.idle = False
    migration.accept(state)
    if state.steps:
        log.info(
            "%d revision(s) to %s from %s to %s",
            len(state.steps),
            migration.direction,
            run.heads_name(state.heads),
            _destination(state, migration.direction, migration.target),
        )
    return state


def _run_locked(
    migration: _Migration, session: Session, state: State, recorder: deploy_ledger.Recorder
) -> bool:
    """Take the migration lock and run the pending revisions under it; False when, queued
    behind another run, this one found the work done meanwhile."""
    settings = migration.settings
    measured = _measured_for_upgrade(
        settings, state, migration.direction, migration.target, session
    )
    recorder.hash_ahead(step.revision for step in state.steps)  # for their ledger rows

    def still_needed() -> bool:
        # Queued behind another run: has it done the work meanwhile?
        now = migration.look_again(session, state)
        if not now.steps:
            migration.accept(now)
        return bool(now.steps)

    with migration_lock(session, settings.lock_timeout, still_needed) as lock:
        if lock is None:
            return False
        # Where the database is under the lock: from here on, only this run moves it.
        now = _under_the_lock(lambda: migration.look_again(session, state))
        if migration.direction == "upgrade" and settings.safety != "off" and now.steps:
            # Weighed under the lock, with the sizes of the tables as they run.
            _weigh_safety(settings, migration.script, now.steps, session, measured)
        # Not before a refusal: a refused run changes nothing, the ledger included.
        _under_the_lock(lambda: _settle_ledger(session, recorder, now))
        _hand_over(session, migration.config)  # a new session after a reconnect while waiting
        run.apply(
            migration.config,
            migration.script,
            migration.direction,
            migration.target,
            settings=settings,
            lock=lock,
            summary=migration.summary,
            refuse=migration.accept,
            heads=now.heads,
            recorder=recorder,
        )
        # The summary says where the database is, read from it, not inferred.
        done = _under_the_lock(lambda: migration.look_again(session, state))
        migration.summary.to_revision = run.heads_name(done.heads)
    return True


def stamp(settings: Settings, summary: Summary, target: str, if_matches: bool = False) -> None:
    """Mark the database as at `target` without running a revision (Flyway's baseline,
    Liquibase's changelog-sync), under the lock, with a ledger row for each revision marked.
    `if_matches`: only when the database's schema matches the models (the comparison `check`
    makes), so adopting an existing database cannot lie; the models describe the head."""
    config, script = run.alembic_project(settings)
    run.refuse_unresolvable_target(script, target)
    if if_matches and set(script.get_revisions(target)) != set(script.get_revisions("heads")):
        raise UsageError(
            f"stamp --if-matches {target}: the models describe the head, so only a stamp to "
            "head can be compared with them; stamp without --if-matches, or to head"
        )
    with _ledger_locked(settings, config, script) as held:
        if held is None:
            return
        summary.from_revision = run.heads_name(held.now.heads)
        if if_matches:
            _refuse_unless_models_match(config, script, target)
        run.stamp(
            config, script, target, lock=held.lock, recorder=held.recorder, heads=held.now.heads
        )
        done = _under_the_lock(
            lambda: run.look_again(held.session.connection, script, held.now, "upgrade", "heads")
        )
        summary.to_revision = run.heads_name(done.heads)
        _note_ledger(summary, held.session, held.recorder)
    log.info("stamp done: at %s (no revision ran)", summary.to_revision)


def _refuse_unless_models_match(config: Config, script: ScriptDirectory, target: str) -> None:
    from migrator.verify import model_differences  # as in `check`

    differences = model_differences(config, script)
    if differences is None:
        raise UsageError(
            f"stamp --if-matches {target}: env.py has no target_metadata to compare with"
        )
    if differences:
        more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
        raise DifferenceFound(
            f"stamp --if-matches {target}: the database's schema differs from the models, "
            f"nothing stamped: {differences[0]}{more}"
        )


def accept(settings: Settings, summary: Summary, revision: str) -> None:
    """Record an applied revision's edited file as reviewed: its checksum now becomes the
    one the ledger holds (a row of its own, with who), so the next run goes on."""
    config, script = run.alembic_project(settings)
    run.refuse_unresolvable_target(script, revision)
    resolved = script.get_revision(revision)
    assert resolved is not None
    with _ledger_locked(settings, config, script) as held:
        if held is None:
            return
        summary.from_revision = summary.to_revision = run.heads_name(held.now.heads)
        recorded = deploy_ledger.accept(
            held.session.connection, held.recorder, resolved.revision, _known_heads(held.now)
        )
        _note_ledger(summary, held.session, held.recorder)
    if recorded:
        log.info("accept: %s's file as it is now is recorded as reviewed", resolved.revision)
    else:
        log.info("accept: nothing to do: the ledger has %s's file as it is", resolved.revision)


@dataclass(frozen=True)
class _LedgerLocked:
    """What `stamp` and `accept` work with: the run's session, the migration lock, the
    ledger's recorder, and where the database is, read under the lock."""

    session: Session
    lock: MigrationLock
    recorder: deploy_ledger.Recorder
    now: State


@contextmanager
def _ledger_locked(
    settings: Settings, config: Config, script: ScriptDirectory
) -> Iterator[_LedgerLocked | None]:
    """A writable session, the migration lock and the ledger brought up to date; None when
    the lock was not needed after all."""
    with _database(settings, config, writable=True) as session:
        state = _inspect(session, config, script, "upgrade", "heads")
        recorder = _recorder(settings, script, state)
        with _ledger_settled(session, script, state, recorder) as held:
            yield None if held is None else _LedgerLocked(session, held[0], recorder, held[1])


@contextmanager
def _ledger_settled(
    session: Session, script: ScriptDirectory, state: State, recorder: deploy_ledger.Recorder
) -> Iterator[tuple[MigrationLock, State] | None]:
    """The migration lock, the database's revisions read under it, and the ledger created,
    adopted or brought up to date (revisions applied outside the migrator); None when the
    lock was not needed after all."""
    with migration_lock(session, session.settings.lock_timeout, lambda: True) as lock:
        if lock is None:
            yield None
            return
        now = _under_the_lock(
            lambda: run.look_again(session.connection, script, state, "upgrade", "heads")
        )
        _under_the_lock(lambda: _settle_ledger(session, recorder, now))
        yield lock, now


def _settle_ledger(session: Session, recorder: deploy_ledger.Recorder, now: State) -> None:
    """Under the lock: the ledger created, adopted or brought up to date."""
    seen = deploy_ledger.look(session.connection, recorder, _known_heads(now))
    deploy_ledger.settle(session.connection, recorder, seen)


def _note_ledger(summary: Summary, session: Session, recorder: deploy_ledger.Recorder) -> None:
    """The ledger's newest row into the summary, once the work is done: a failure to read it
    is said, and is not the run's. A session that ended after the work (the lock's release
    found it gone) is not made again for it: the summary then has no row."""
    try:
        connection = _connected(session)
        if connection.invalidated:
            log.warning("ledger: its newest row was not read for the summary (the session ended)")
            return
        summary.ledger = deploy_ledger.newest(connection, recorder.table)
    except (SQLAlchemyError, MigratorError) as error:
        log.warning(
            "ledger: its newest row was not read for the summary (%s)", errors.reason(error)
        )


def _known_heads(state: State) -> tuple[str, ...]:
    """The database's revisions this project knows: of a newer release's, the ledger can
    say nothing."""
    return tuple(head for head in state.heads if head not in state.unknown)


def _connected(session: Session) -> Connection:
    """The session's connection, made again when env.py's own connection took its place
    (Session.make_room, for a small pool)."""
    if session.closed:
        session.reconnect(announce=False)
    return session.connection


def _recorder(settings: Settings, script: ScriptDirectory, state: State) -> deploy_ledger.Recorder:
    """The ledger beside the version table env.py names, and who this run is."""
    schema = state.version_table[1] if state.version_table is not None else None
    who = deploy_ledger.Who(settings.host, settings.deploy_id)
    return deploy_ledger.Recorder(deploy_ledger.table(schema), who, script)


def _measured_at_deploy(
    settings: Settings, state: State, direction: Direction, target: str, session: Session
) -> dict[str, safety_report.Effects] | None:
    """With MIGRATOR_SAFETY_MEASURE=deploy, what each pending revision measurably does (locks,
    rewrites, scans), measured now on a scratch database made on this server, by revision;
    None otherwise (the manifest's effects are weighed). Called before the migration lock."""
    if settings.safety_measure != "deploy" or not state.steps:
        return None
    from migrator.verify import measure  # as in `verify`: autogenerate only when asked

    started = time.monotonic()
    with session.kept_busy():  # the measurement may take longer than idle_session_timeout
        effects = measure(settings, state.heads, direction, target, session.identity)
    log.info(
        "safety: %d revision(s) measured on a scratch database in %.2f s",
        len(effects),
        time.monotonic() - started,
    )
    return {measured.revision: measured for measured in effects}


def _measured_for_upgrade(
    settings: Settings, state: State, direction: Direction, target: str, session: Session
) -> dict[str, safety_report.Effects] | None:
    """The measurement MIGRATOR_SAFETY weighs before an upgrade; under `warn`, one that
    failed is said and skipped (the run's own revisions will say what fails)."""
    if direction != "upgrade" or settings.safety == "off":
        return None
    try:
        return _measured_at_deploy(settings, state, direction, target, session)
    except MigratorError as error:
        if settings.safety == "block" or signals.stop_requested.is_set():
            raise
        log.warning("safety report skipped (MIGRATOR_SAFETY=warn): %s", error)
        return {}


def _recorded(
    settings: Settings, steps: tuple[Script, ...], session: Session
) -> dict[str, safety_report.Effects]:
    """The effects the manifest records (measured where the project was built) of each step
    whose file is unchanged since, by revision; named in the schema the run is in."""
    schema = session.identity.schema or "public"
    recorded = project_manifest.recorded_effects(settings.alembic_ini, schema)
    return {
        step.revision: safety_report.Effects(**recorded[step.revision]["effects"])
        for step in steps
        if step.revision in recorded
        and recorded[step.revision]["file"] == project_manifest.revision_hash(step.path)
    }


def _safety_report(
    settings: Settings,
    script: ScriptDirectory,
    steps: tuple[Script, ...],
    session: Session,
    measured: dict[str, safety_report.Effects] | None = None,
) -> safety_report.Report:
    """The effects of `steps`, `measured` at deploy or else the manifest's, weighed with the
    live size of each table they touch (read-only catalog reads on the run's session); the
    steps with none are named in a note."""
    started = time.monotonic()
    if measured is None:
        measured = _recorded(settings, steps, session)
    effects = [measured[step.revision] for step in steps if step.revision in measured]
    sizes = safety_report.live_sizes(
        session.connection, safety_report.touched_tables(effects), settings.safety_error_rows
    )
    report = safety_report.weigh(
        effects,
        sizes,
        safety_report.allowances(script, [found.revision for found in effects]),
        settings.safety_warn_rows,
        settings.safety_error_rows,
        phases.before_the_rollout(script, steps),
    )
    unmeasured = [step.revision for step in steps if step.revision not in measured]
    if unmeasured:
        report.notes.insert(0, f"{UNWEIGHED}: {_unmeasured(settings, unmeasured)}")
    if effects:
        log.info(
            "safety: %d of %d pending revision(s) weighed with the live table sizes in %.3f s",
            len(effects),
            len(steps),
            time.monotonic() - started,
        )
    return report


def _unmeasured(settings: Settings, revisions: list[str]) -> str:
    if settings.safety_measure == "deploy":
        return f"their measurement failed: {', '.join(revisions)}"
    return (
        f"no effects measured for these revision files as they are now (in "
        f"{project_manifest.path_for(settings.alembic_ini).name}: run `migrator verify` where "
        f"the project is built, or set MIGRATOR_SAFETY_MEASURE=deploy): {', '.join(revisions)}"
    )


def _weigh_safety(
    settings: Settings,
    script: ScriptDirectory,
    steps: tuple[Script, ...],
    session: Session,
    measured: dict[str, safety_report.Effects] | None,
) -> None:
    """MIGRATOR_SAFETY for an upgrade: log the findings; with `block`, refuse error-level ones,
    and revisions with no measured effects, before anything runs."""
    report = _safety_report(settings, script, steps, session, measured)
    for finding in report.findings:
        log.log(
            logging.INFO if finding.severity == "info" else logging.WARNING,
            "safety: %s",
            finding.line(),
        )
    for note in report.notes:
        log.log(
            logging.WARNING if note.startswith(UNWEIGHED) else logging.INFO,
            "safety: note: %s",
            note,
        )
    if settings.safety == "block":
        _refuse(report)


def _refuse(report: safety_report.Report) -> None:
    """MIGRATOR_SAFETY=block: nothing runs past an error-level finding the revision does not
    accept, or a revision whose effects were never measured."""
    refused = report.refused()
    if refused:
        named = "; ".join(f"{f.rule} on {f.table} in {f.revision}" for f in refused)
        raise SafetyRefused(
            f"MIGRATOR_SAFETY=block: {len(refused)} error-level finding(s), nothing ran: "
            f"{named}; make the revision safer, or accept the risk in it: "
            'migrator_safety = {"allow": ["RULE:TABLE"]}'
        )
    unweighed = [note for note in report.notes if note.startswith(UNWEIGHED)]
    if unweighed:
        raise SafetyRefused(f"MIGRATOR_SAFETY=block: nothing ran: {unweighed[0]}")


def _plan_markdown(
    direction: str,
    source: str,
    target: str,
    steps: list[dict[str, Any]],
    report: safety_report.Report | None,
) -> str:
    """The plan as Markdown, for a pull request or the GitHub job summary."""
    lines = [f"### Plan: {direction} from {source} to {target}, {len(steps)} revision(s)", ""]
    lines += [f"{n}. `{step['revision']}` {step['message']}" for n, step in enumerate(steps, 1)]
    if report is not None:
        lines += ["", safety_report.markdown(direction, source, target, report)]
    return "\n".join(lines)


def _accept(
    state: State,
    direction: Direction,
    settings: Settings,
    summary: Summary,
    script: ScriptDirectory,
) -> None:
    """Note where the database is; refuse a revision this project does not know, and, in a
    phase, a pending revision of the other phase."""
    if settings.phase is not None:
        phases.refuse_the_other_phase(script, state.steps, settings.phase)
    if summary.applied == 0:
        summary.from_revision = run.heads_name(state.heads)
    if state.unknown:
        message = (
            f"the database is at {', '.join(state.unknown)}, a revision this project does not "
            "know (a newer release migrated it?)"
        )
        if not (settings.allow_unknown_revision and direction == "upgrade"):
            raise UsageError(
                f"{message}; set MIGRATOR_ALLOW_UNKNOWN_REVISION=true to let an "
                "upgrade start anyway"
                if direction == "upgrade"
                else message
            )
        log.warning("%s; MIGRATOR_ALLOW_UNKNOWN_REVISION is true: nothing to do", message)
    elif not state.steps and summary.applied == 0:
        summary.to_revision = run.heads_name(state.heads)
        logs.nothing_to_do(run.heads_name(state.heads))


def _heads_after(state: State, direction: Direction) -> set[str]:
    """The database's revisions once `state.steps` have run: each step replaces the
    revisions below it (upgrade), or is replaced by them (downgrade)."""
    stepped = {str(step.revision) for step in state.steps}
    below = {revision for step in state.steps for revision in _down_revisions(step)}
    if direction == "upgrade":
        return (set(state.heads) - below) | (stepped - below)
    return (set(state.heads) - stepped) | (below - stepped)


def _down_revisions(step: Script) -> tuple[str, ...]:
    below = step.down_revision
    return (below,) if isinstance(below, str) else tuple(below or ())


def _destination(state: State, direction: Direction, target: str) -> str:
    """A relative target (+2, -1) as the revision it reaches from where the database is."""
    if not re.fullmatch(r"[+-]\d+", target) or not state.steps:
        return target
    if direction == "upgrade":
        return str(state.steps[-1].revision)
    return run.heads_name(_down_revisions(state.steps[-1]))


def _phase_target(
    settings: Settings, script: ScriptDirectory, direction: Direction, target: str
) -> str | None:
    """The target of an upgrade in a phase (MIGRATOR_PHASE): the phase's head; None, said
    in the log, when no revision is in that phase. Without a phase, `target`."""
    if settings.phase is None:
        return target
    if direction != "upgrade":
        raise UsageError(
            f"MIGRATOR_PHASE={settings.phase}: only an upgrade runs in phases; unset "
            "MIGRATOR_PHASE (--phase) to downgrade"
        )
    found = phases.target(script, settings.phase, target)
    if found is None:
        log.info(
            "nothing to do: no revision of this project is in the %s phase (%s)",
            settings.phase,
            "none is on a branch labelled post" if settings.phase == "post" else "all are post",
        )
    else:
        log.info("phase %s: up to %s", settings.phase, found)
    return found


def _under_the_lock(work: Callable[[], T]) -> T:
    """`work()` on the lock's session: that session lost is the lock lost (7), not an
    outage met before any work (3)."""
    try:
        return work()
    except ConnectionLost as error:
        raise LockLost(f"the migration lock was lost: its session ended ({error})") from None


def _inspect(
    session: Session, config: Config, script: ScriptDirectory, direction: Direction, target: str
) -> State:
    """Where the database is (env.py reads it); read again on a new session when the session
    ended meanwhile (a restart, a terminated session), within the wait timeout: before the
    migration lock is taken, nothing this run did can be lost with it."""

    def reconnect(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("the session ended before the migration lock was taken (%s)", error)
        session.reconnect(announce=False)
        _hand_over(session, config)

    retrying = retry.retrying(
        retry=retry_if_exception_type(ConnectionLost),
        wait=wait_random_exponential(multiplier=0.05, max=1),
        stop=retry.before_deadline(session.settings.wait_timeout),
        before_sleep=reconnect,
        reraise=True,
    )
    return retrying(run.inspect, config, script, direction, target)


@contextmanager
def _database(
    settings: Settings, config: Config | None = None, *, writable: bool = False
) -> Iterator[Session]:
    """The run's session, once the database accepts it; its connection is handed to env.py
    through the Alembic config (Alembic's connection-sharing recipe)."""
    settings.connection_url()  # raises when no database is configured
    logs.connecting(settings.masked_url())
    session = Session(settings, writable=writable)
    # The session's connection waits for a busy server; so does every other the run opens.
    patient = patient_connections(lambda: session.patience, session.make_room)
    if config is not None:
        _hand_over(session, config)
    try:
        with patient, signals.watching(session.stalled):
            yield session
    finally:
        session.dispose()


def _hand_over(session: Session, config: Config) -> None:
    """Give env.py the session's connection, and the identity of what it reached: what
    env.py's own connection, if it makes one, must reach as well."""
    config.attributes["connection"] = session.connection
    config.attributes[run.IDENTITY] = replace(session.identity, schema=session.settings.schema)


def _emit(as_json: bool, payload: Any, lines: list[str]) -> None:
    """A command's output on stdout: one JSON document, or lines for a person."""
    if as_json:
        print(json.dumps(payload))
    elif lines:
        print("\n".join(lines))
