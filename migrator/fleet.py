"""Fleets: one command over many tenant databases or schemas (`migrator fleet`).

Each target is a run of its own (its wait, lock, revisions and judgement), in a process of
its own, because Alembic's `context` is process-global. The processes are forked from a
server that imported the migrator once, so a target costs its work, not an interpreter's
start.

Before any target runs, the fleet looks at each, with one connection: what the server says
it reached (server, database, schema), so that two lines that are one tenant (spelled two
ways: `localhost` and `127.0.0.1`, `schema=NAME` and a URL whose options set search_path to
NAME) are refused before either runs under a lock of its own; and, when the command ends at
a known revision, whether it is there already: such a target is answered here, with no
process.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from migrator import signals
from migrator.catalog import ledger_doubt, ledger_last_row, ledger_newest_rows, literal_colons
from migrator.config import FleetSettings, Settings, check_names, parse_url, schema_name
from migrator.errors import Interrupted, UsageError, permission_denied
from migrator.job import Command, run_one
from migrator.logs import log
from migrator.masking import Mask, passwords_in
from migrator.run import versions_statement
from migrator.scratch import Identity

# Imported once by the process server; every target's process starts with them loaded.
_PRELOAD = [
    "migrator.commands",
    "migrator.job",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.postgresql.psycopg2",
]
# How often the look at every target before the runs (one connection each) says how far it
# got.
PROGRESS_SECONDS = 5.0
# What a target reached, by what the server says, in what any role may read:
# - the server: its start time (pg_postmaster_start_time, as epoch seconds, so the session's
#   TimeZone does not change it) and its system_identifier (pg_control_system(): PUBLIC may
#   execute it by default; a managed service may revoke that, and then the start time alone
#   tells servers apart). Both, because a server cloned from a snapshot keeps its origin's
#   system_identifier. Not inet_server_addr()/inet_server_port(): NULL over a Unix socket,
#   and one server has an address per interface (`localhost` may reach it at ::1); not
#   data_directory: reading it needs pg_read_all_settings.
# - the database: current_database().
# - the schema the target's run works in: a schema target's own (when it exists: else its
#   run stops at once), as the run's search_path makes it, even behind a pooler that drops
#   libpq's `options`; any other target's current_schema(), its own URL's options applied.
_REACHED = """
    SELECT current_database() AS database,
           CASE WHEN CAST(:schema AS text) IS NULL THEN current_schema()
                ELSE (SELECT nspname::text FROM pg_namespace WHERE nspname = :schema)
           END AS schema,
           extract(epoch FROM pg_postmaster_start_time())::text AS started,
           {system} AS system
"""
_WITH_SYSTEM = text(
    _REACHED.format(system="(SELECT system_identifier::text FROM pg_control_system())")
)
# A role that may not execute pg_control_system() (its permission is checked when the query
# starts, whichever CASE branch would run): the start time alone.
_WITHOUT_SYSTEM = text(_REACHED.format(system="CAST(NULL AS text)"))
# After a stop, how long running targets get to roll back before they are killed: within
# the fleet's own stop grace, so that the fleet can still report each of them.
_STOP_WAIT_SECONDS = signals.STOP_GRACE_SECONDS - 1.5


@dataclass(frozen=True)
class Target:
    """One line of the targets file."""

    line: int
    name: str  # as every output shows it: a database, `schema=NAME`, or a URL, masked
    url: URL
    schema: str | None = None


@dataclass(frozen=True)
class Wanted:
    """Where the command leaves every target: the revisions the version table then holds,
    which version table, and the checksum the deploy ledger holds for each revision applied
    (migrator.ledger): a target found so is answered by the fleet itself."""

    revisions: tuple[str, ...]
    version_table: tuple[str, str | None]
    checksums: dict[str, str]


@dataclass
class Outcome:
    """What became of a target; `status` is ok, failed, interrupted or skipped."""

    target: Target
    status: str = "skipped"
    exit_status: int | None = None
    from_revision: str | None = None
    to_revision: str | None = None
    applied: int = 0
    seconds: float = 0.0
    revisions: list[dict[str, Any]] = field(default_factory=list)
    ledger: dict[str, Any] | None = None  # the target's newest ledger row when its run ended
    output: str = ""  # what its command printed

    def fields(self) -> dict[str, Any]:
        return {
            "name": self.target.name,
            "from": self.from_revision,
            "to": self.to_revision,
            "applied": self.applied,
            "status": self.status,
            "exit_status": self.exit_status,
            "seconds": round(self.seconds, 3),
        }


def read_targets(fleet: FleetSettings, settings: Settings) -> list[Target]:
    """Every target of the file, checked before anything runs: a database name on the
    configured server, a URL, or `schema=NAME` in the configured database."""
    path = fleet.targets_file
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        why = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise UsageError(f"MIGRATOR_FLEET_FILE: cannot read {path}: {why}") from None
    targets: list[Target] = []
    seen: dict[tuple[str, str | None], int] = {}
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        target = _target(text, number, settings)
        key = (target.url.render_as_string(hide_password=True), target.schema)
        if key in seen:
            raise UsageError(
                f"MIGRATOR_FLEET_FILE line {number}: {target.name} is line {seen[key]} again"
            )
        seen[key] = number
        targets.append(target)
    if not targets:
        raise UsageError(f"MIGRATOR_FLEET_FILE: {path} names no target")
    return targets


def _target(text: str, number: int, settings: Settings) -> Target:
    label = f"MIGRATOR_FLEET_FILE line {number}"
    if "://" in text:
        url = parse_url(text, label)
        if not url.database:
            raise UsageError(f"{label}: the URL names no database")
        return Target(number, Mask()(text), url)  # as written, its password hidden
    base = settings.database_url
    if base is None:
        raise UsageError(
            f"{label}: a database or schema name needs a configured server: set "
            "DATABASE_URL (or DB_HOST, DB_USER and DB_PASSWORD), or give full URLs"
        )
    if text.startswith("schema="):
        schema = schema_name(text.removeprefix("schema="), label)
        return Target(number, f"schema={schema}", base, schema)
    if any(character.isspace() or character in "/?@=" for character in text):
        raise UsageError(
            f"{label}: {text!r} is not a database name, a postgresql:// URL or schema=NAME"
        )
    check_names({"database": text}, label)  # as DATABASE_URL's would be
    return Target(number, text, base.set(database=text))


def share(targets: Sequence[Target], fleet: FleetSettings) -> list[Target]:
    """This pod's share: every target whose position modulo the shards is its index."""
    return [
        target for position, target in enumerate(targets) if position % fleet.shards == fleet.shard
    ]


def run(
    settings: Settings,
    fleet: FleetSettings,
    targets: Sequence[Target],
    command: Command,
    wanted: Wanted | None,
) -> list[Outcome]:
    """Run `command` on each target, as a run of its own: the first `fleet.canary` first,
    the rest only when all of those succeeded; no new target once `fleet.max_failures` have
    failed.

    First a look at every target: two that reach one tenant stop the fleet (UsageError)
    before any runs. With `wanted`, a target already there, its deploy ledger agreeing, is
    answered without a process.
    """
    temporary = _temporary_directory()
    outcomes = {target: Outcome(target) for target in targets}
    looks = _look(settings, fleet, targets, wanted)
    if not signals.stop_requested.is_set():  # else nothing runs: the stop is the report
        refuse_one_tenant_twice([(target, looks[target].reached) for target in targets])
    there = {target: look for target, look in looks.items() if look.there is not None}
    for target, look in there.items():
        outcome = outcomes[target]
        outcome.status, outcome.exit_status, outcome.seconds = "ok", 0, look.there or 0.0
        outcome.ledger = look.ledger
        revisions = wanted.revisions if wanted is not None else ()
        outcome.from_revision = outcome.to_revision = ",".join(revisions) or "base"
        log.info(
            "[%s] nothing to do: at %s", target.name, outcome.to_revision, extra=_about(target)
        )
    pending = [target for target in targets if target not in there]
    canaries = set(targets[: fleet.canary])
    canary = [target for target in pending if target in canaries]
    rest = [target for target in pending if target not in canaries]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    with tempfile.TemporaryDirectory(prefix="migrator-fleet-", dir=temporary) as scratch:
        runner = _Runner(context, settings, command, Path(scratch), outcomes)
        if canary:
            log.info("fleet: canary stage, %d target(s) first", len(canary))
            runner.run(canary, fleet.parallelism, max_failures=1)
            if runner.failures:
                log.error("fleet: a canary target failed; the other targets are skipped")
                rest = []
        failures_left = fleet.max_failures - runner.failures
        if rest and failures_left > 0 and not signals.stop_requested.is_set():
            runner.run(rest, fleet.parallelism, failures_left)
    return [outcomes[target] for target in targets]


def _temporary_directory() -> str:
    """The one place a fleet writes: the temporary directory (TMPDIR, else /tmp), where its
    process server binds its socket (multiprocessing has no other place for it) and each
    target's run leaves its output and summary. A read-only root filesystem has none unless
    one is mounted: then the fleet stops before it touches a target, saying so."""
    try:
        return tempfile.gettempdir()
    except FileNotFoundError:  # tempfile tried TMPDIR, /tmp, /var/tmp, /usr/tmp and the cwd
        raise UsageError(
            "fleet needs a writable temporary directory (TMPDIR, else /tmp) and finds none "
            "(a read-only root filesystem?): mount one at /tmp (docker run --tmpfs /tmp; "
            "the Helm chart's Job has an emptyDir there)"
        ) from None


@dataclass(frozen=True)
class _Look:
    """What the look before the runs found at a target: what it reached (None: not
    reached); when it is already at the wanted revision, the look's seconds and the deploy
    ledger's newest row."""

    reached: Identity | None = None
    there: float | None = None
    ledger: dict[str, Any] | None = None


def _look(
    settings: Settings,
    fleet: FleetSettings,
    targets: Sequence[Target],
    wanted: Wanted | None,
) -> dict[Target, _Look]:
    """Every target, one connection each, several at a time: what it reached; and, with
    `wanted`, whether it is there. Over many targets, how far it got every PROGRESS_SECONDS."""
    looks: list[_Look] = []
    reported = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(fleet.parallelism, 4)) as pool:
        found_all = pool.map(lambda target: _look_at(settings, target, wanted), targets)
        for found in found_all:
            looks.append(found)
            if time.monotonic() - reported >= PROGRESS_SECONDS and len(looks) < len(targets):
                reported = time.monotonic()
                there = sum(found.there is not None for found in looks)
                log.info(
                    "fleet: looked at %d of %d target(s)%s",
                    len(looks),
                    len(targets),
                    f", {there} already at the target" if wanted is not None else "",
                )
    return dict(zip(targets, looks, strict=True))


def _look_at(settings: Settings, target: Target, wanted: Wanted | None) -> _Look:
    """One target: what it reached, and whether its version table holds exactly `wanted`'s
    revisions and its deploy ledger agrees. Any doubt (no connection, no table, no ledger
    yet, an edited revision) leaves the target to its run, which says what is wrong, if
    anything, and creates or adopts the ledger."""
    if signals.stop_requested.is_set():
        return _Look()
    started = time.monotonic()
    engine = create_engine(target_settings(settings, target).connection_url(), poolclass=NullPool)
    reached = None
    try:
        with engine.connect() as connection:
            reached = _reached(connection, target)
            if wanted is None:
                return _Look(reached)
            ledger = _there(connection, wanted)
    except Exception as doubt:
        log.debug(
            "[%s] not known to be at the target (%s)",
            target.name,
            type(doubt).__name__,
            extra=_about(target),
        )
        return _Look(reached)
    finally:
        engine.dispose()
    if ledger is None:
        return _Look(reached)
    return _Look(reached, time.monotonic() - started, ledger)


def _there(connection: Connection, wanted: Wanted) -> dict[str, Any] | None:
    """The ledger's newest row, when the target is at `wanted` and its ledger agrees (as the
    no-op fast path judges, migrator.fast); None otherwise."""
    heads = connection.execute(versions_statement(*wanted.version_table)).scalars()
    if sorted(heads) != sorted(wanted.revisions):
        return None
    schema = wanted.version_table[1]
    rows = connection.execute(text(literal_colons(ledger_newest_rows(schema)))).all()
    if ledger_doubt(list(rows), wanted.checksums) is not None:
        return None
    newest: dict[str, Any] = connection.execute(
        text(literal_colons(ledger_last_row(schema)))
    ).scalar_one()
    return newest


def _reached(connection: Connection, target: Target) -> Identity:
    """What the target's session reached (`_REACHED`)."""
    values = {"schema": target.schema}
    try:
        row = connection.execute(_WITH_SYSTEM, values).one()
    except DBAPIError as error:
        if not permission_denied(error):
            raise
        connection.rollback()
        row = connection.execute(_WITHOUT_SYSTEM, values).one()
    return Identity(row.database, row.system, row.started, row.schema)


def refuse_one_tenant_twice(reached: Sequence[tuple[Target, Identity | None]]) -> None:
    """Two targets that reach one schema of one database of one server are one tenant, which
    their runs would migrate at once, under two locks (a schema target's and a database's):
    a usage error naming both lines. A target not reached, or in no schema, is left to its
    run."""
    seen: dict[tuple[str, str, str], list[tuple[Target, Identity]]] = {}
    for target, identity in reached:
        if identity is None or identity.schema is None:
            continue
        key = (identity.started, identity.database, identity.schema)
        for earlier, earlier_identity in seen.get(key, []):
            if earlier_identity.same_server(identity):
                raise UsageError(
                    f"MIGRATOR_FLEET_FILE line {target.line}: {target.name} is the tenant of "
                    f"line {earlier.line} ({earlier.name}) again: both reach schema "
                    f"{identity.schema} of database {identity.database} on one server"
                )
        seen.setdefault(key, []).append((target, identity))


def target_settings(settings: Settings, target: Target) -> Settings:
    """The fleet's settings, for a run on `target`: its URL, schema and name (every log line
    names it), its password masked too."""
    return replace(
        settings,
        database_url=target.url,
        schema=target.schema,
        tenant=target.name,
        passwords=(*settings.passwords, *passwords_in(target.url)),
    )


class _Runner:
    """Runs targets in processes, a few at a time, and records their outcomes."""

    def __init__(
        self,
        context: Any,
        settings: Settings,
        command: Command,
        scratch: Path,
        outcomes: dict[Target, Outcome],
    ) -> None:
        self.context = context
        self.settings = settings
        self.command = command
        self.scratch = scratch
        self.outcomes = outcomes
        self.failures = 0

    def run(self, targets: Iterable[Target], parallelism: int, max_failures: int) -> None:
        waiting = deque(targets)
        running: dict[Any, tuple[Any, Target, float]] = {}
        stop_sent_at: float | None = None
        while waiting or running:
            while (
                waiting
                and len(running) < parallelism
                and self.failures < max_failures
                and not signals.stop_requested.is_set()
            ):
                target = waiting.popleft()
                process = self._start(target)
                running[process.sentinel] = (process, target, time.monotonic())
                # A target that has already failed stops the next start, not one later.
                self._reap(running, timeout=0)
            if not running:
                break
            self._reap(running, timeout=0.2)
            if signals.stop_requested.is_set():
                if stop_sent_at is None:
                    stop_sent_at = time.monotonic()
                    for process, _, _ in running.values():
                        process.terminate()  # SIGTERM: each rolls back and releases its lock
                elif time.monotonic() - stop_sent_at > _STOP_WAIT_SECONDS:
                    for process, _, _ in running.values():
                        process.kill()  # its server drops the session and rolls back
        for target in waiting:
            log.info("[%s] skipped", target.name, extra=_about(target))

    def _reap(self, running: dict[Any, tuple[Any, Target, float]], timeout: float) -> None:
        """Record the targets that have ended (waiting up to `timeout` for one)."""
        for sentinel in multiprocessing.connection.wait(list(running), timeout=timeout):
            process, target, started = running.pop(sentinel)
            process.join()
            self._record(target, process.exitcode, time.monotonic() - started)

    def _start(self, target: Target) -> Any:
        settings = replace(
            target_settings(self.settings, target),
            summary_file=self._summary_path(target),
            # The fleet writes the one termination message; the measurement would repeat
            # the same revisions once per tenant (run `plan --safety` on one instead).
            termination_log=self.scratch / "no-termination-log",
            safety="off",
        )
        output = self.scratch / f"{target.line}.out"
        process = self.context.Process(
            target=_run_target,
            args=(settings, self.command, str(output)),
            name=f"migrator-{target.line}",
            daemon=False,
        )
        process.start()
        return process

    def _summary_path(self, target: Target) -> Path:
        return self.scratch / f"{target.line}.json"

    def _record(self, target: Target, exit_code: int | None, seconds: float) -> None:
        outcome = self.outcomes[target]
        exit_status = 128 + -exit_code if exit_code is not None and exit_code < 0 else exit_code
        outcome.exit_status, outcome.seconds = exit_status, seconds
        try:
            summary = json.loads(self._summary_path(target).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            summary = {}
        outcome.from_revision = summary.get("from")
        outcome.to_revision = summary.get("to")
        outcome.applied = int(summary.get("applied") or 0)
        outcome.revisions = list(summary.get("revisions") or [])
        outcome.ledger = summary.get("ledger")
        with suppress(OSError):
            outcome.output = (self.scratch / f"{target.line}.out").read_text(encoding="utf-8")
        if exit_status == 0:
            outcome.status = "ok"
        elif exit_status in Interrupted.EXIT_STATUSES:
            outcome.status = Interrupted.status
            self.failures += 1
        else:
            outcome.status = "failed"
            self.failures += 1
        log.log(
            logging.INFO if outcome.status == "ok" else logging.ERROR,
            "[%s] %s (exit %s) in %.2f s",
            target.name,
            outcome.status,
            exit_status,
            seconds,
            extra=_about(target),
        )


def _about(target: Target) -> dict[str, Any]:
    """A fleet's line about a target carries its name as a JSON field too."""
    return {"fields": {"tenant": target.name}}


def _run_target(settings: Settings, command: Command, output: str) -> None:
    """A target's process: one run, its stdout kept for the fleet."""
    signals.catch()  # a SIGTERM from the fleet at once is reported too, as in migrator/__main__
    descriptor = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(descriptor, 1)
    os.close(descriptor)
    sys.exit(run_one(settings, command).exit_status)


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    statuses = [outcome.status for outcome in outcomes]
    return {
        "targets": len(outcomes),
        "ok": statuses.count("ok"),
        "failed": statuses.count("failed") + statuses.count(Interrupted.status),
        "skipped": statuses.count("skipped"),
    }


def exit_status(outcomes: Sequence[Outcome]) -> int:
    """0 when every target is there; else the first failed target's (in the file's order)."""
    for outcome in outcomes:
        if outcome.status in ("failed", Interrupted.status):
            return outcome.exit_status or 1
    return 0 if all(outcome.status == "ok" for outcome in outcomes) else 1
