"""`migrator fleet`: tenant databases and tenant schemas on one real PostgreSQL, each target
through the same wait, lock and run as a single run."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conditions import Proxy
from conftest import (
    PASSWORD,
    PROJECTS,
    ROLE,
    ROOT,
    Database,
    Server,
    finish,
    run_migrator,
    start_migrator,
)
from conftest import wait_for_line as read_until

HEAD = "c3f9b7d21a58"  # the example project's head
FIRST = "0d25ea6c8183"  # and its first revision
AUDITED = {"MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini")}
AUDITED_ONCE = {"a1a1a1a1a1a1": 1, "a2a2a2a2a2a2": 1, "a3a3a3a3a3a3": 1}


@dataclass
class Fleet:
    """Tenant databases on the test server, and tenant schemas in one database of it."""

    server: Server
    databases: list[Database]
    schemas: list[str]
    home: Database  # the configured database: the schemas live here
    targets_file: Path

    def write(self, lines: list[str]) -> None:
        self.targets_file.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.home.env, "MIGRATOR_FLEET_FILE": str(self.targets_file), **extra}

    def schema_revision(self, schema: str) -> str | None:
        rows = self.home.query(
            "SELECT count(*) FROM pg_tables WHERE schemaname = :schema "
            "AND tablename = 'alembic_version'",
            schema=schema,
        )
        if not rows[0][0]:
            return None
        rows = self.home.query(f"SELECT version_num FROM {schema}.alembic_version")
        return ",".join(sorted(row[0] for row in rows)) or None

    def applied(self, where: Database | str) -> dict[str, int]:
        """The audited project's record of each revision's runs, in a database or schema."""
        if isinstance(where, Database):
            database, table = where, "applied"
        else:
            database, table = self.home, f"{where}.applied"
        rows = database.query(f"SELECT revision, count(*) FROM {table} GROUP BY revision")
        return {row[0]: int(row[1]) for row in rows}


@pytest.fixture
def make_fleet(
    server: Server, tmp_path: Path, driver: str | None
) -> Iterator[Callable[[int, int], Fleet]]:
    created: list[str] = []

    def make(databases: int, schemas: int) -> Fleet:
        prefix = f"tenant_{uuid.uuid4().hex[:6]}"
        names = [f"{prefix}_{number:03d}" for number in range(databases + 1)]
        with server.admin.connect() as connection:
            for name in names:
                connection.execute(sa.text(f"CREATE DATABASE {name} OWNER {ROLE}"))
                created.append(name)
        home = Database(server, names[0], driver)  # a test of both drivers: DATABASE_URL
        schema_names = [f"{prefix}_s{number:03d}" for number in range(schemas)]
        for schema in schema_names:
            home.query(f"CREATE SCHEMA {schema}")
        tenants = [Database(server, name) for name in names[1:]]
        fleet = Fleet(server, tenants, schema_names, home, tmp_path / "targets")
        fleet.write(
            [database.name for database in tenants] + [f"schema={name}" for name in schema_names]
        )
        return fleet

    yield make
    with server.admin.connect() as connection:
        for name in created:
            connection.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))


def summary_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if "summary command=fleet" in line]
    return line


def targets_of(stdout: str) -> dict[str, dict[str, object]]:
    return {entry["name"]: entry for entry in json.loads(stdout)["targets"]}


def ledger_rows(stdout: str) -> dict[str, dict[str, Any]]:
    """Each target's newest deploy ledger row, as the fleet's --json shows it."""
    return {entry["name"]: entry["ledger"] for entry in json.loads(stdout)["targets"]}


@pytest.mark.slow
def test_fifty_databases_and_fifty_schemas_reach_head_then_a_second_run_is_a_no_op(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    fleet = make_fleet(50, 50)
    result = run_migrator("fleet", "upgrade", "head", "--json", env=fleet.env(), timeout=600)

    assert result.status == 0, result.stderr[-3000:]
    assert "targets=100 ok=100 failed=0 skipped=0" in summary_line(result.stderr)
    entries = targets_of(result.stdout)
    assert {entry["status"] for entry in entries.values()} == {"ok"}
    assert {entry["applied"] for entry in entries.values()} == {4}
    assert {row["revision"] for row in ledger_rows(result.stdout).values()} == {HEAD}
    assert [database.revision() for database in fleet.databases] == [HEAD] * 50
    assert [fleet.schema_revision(schema) for schema in fleet.schemas] == [HEAD] * 50
    # A schema tenant's tables are its own: nothing was created in the configured schema.
    assert "cars" not in fleet.home.tables()
    # Every line of a target's run names it: each target's own run took its lock and said
    # so in the target's name (the fleet's own lines name them too: not what is checked).
    taken = [line for line in result.stderr.splitlines() if "migration lock taken" in line]
    tag = re.compile(r"\[([^\]]+)\] migration lock taken")
    named = [found[1] if (found := tag.search(line)) else line for line in taken]
    names = [database.name for database in fleet.databases]
    names += [f"schema={schema}" for schema in fleet.schemas]
    assert sorted(named) == sorted(names)

    again = run_migrator("fleet", "upgrade", "head", "--json", env=fleet.env(), timeout=120)

    assert again.status == 0, again.stderr[-3000:]
    assert "targets=100 ok=100 failed=0 skipped=0" in summary_line(again.stderr)
    assert {entry["applied"] for entry in targets_of(again.stdout).values()} == {0}
    assert ledger_rows(again.stdout) == ledger_rows(result.stdout)  # the rows of the first run
    # Answered by the fleet itself: one query per target, no run of its own, no lock taken.
    assert again.stderr.count("nothing to do: at") == 100
    assert "migration lock" not in again.stderr


@pytest.mark.both_drivers
def test_a_broken_tenant_fails_while_the_others_reach_head(
    make_fleet: Callable[[int, int], Fleet], driver: str
) -> None:
    fleet = make_fleet(6, 2)
    broken = fleet.databases[2]
    broken.query("CREATE TABLE cars (id int)")  # the first revision creates it: a conflict
    env = fleet.env(MIGRATOR_FLEET_MAX_FAILURES="3")
    result = run_migrator("fleet", "upgrade", "--json", env=env, timeout=300)

    assert result.status == 1, result.stderr[-3000:]
    entries = targets_of(result.stdout)
    assert entries[broken.name]["status"] == "failed"
    assert entries[broken.name]["exit_status"] == 1
    assert [e["status"] for name, e in entries.items() if name != broken.name] == ["ok"] * 7
    assert "targets=8 ok=7 failed=1 skipped=0" in summary_line(result.stderr)
    # Every target's run is on the driver the configured URL names.
    assert result.stderr.count(f"connecting to postgresql+{driver}://") >= 8
    # The broken target's own run says what failed, in its name (beside the fleet's line).
    said = [line for line in result.stderr.splitlines() if f"ERROR   [{broken.name}] " in line]
    assert any('relation "cars" already exists' in line for line in said), said
    assert broken.revision() is None
    assert all(database.revision() == HEAD for database in fleet.databases if database != broken)


@pytest.mark.both_drivers
def test_each_target_reports_its_ledgers_newest_row_and_an_edited_revision_is_not_a_no_op(
    make_fleet: Callable[[int, int], Fleet], tmp_path: Path
) -> None:
    """The fleet's --json shows each target's newest ledger row: the failure's, or the
    deploy's last revision; a target the fleet answers itself (already there) shows the row
    that put it there. An applied revision edited since sends every target to its own run,
    which stops it (exit 2), as a single run would."""
    fleet = make_fleet(3, 1)
    project = tmp_path / "project"
    for part in ("alembic", "persistence"):
        shutil.copytree(ROOT / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", project / "alembic.ini")
    env = fleet.env(MIGRATOR_CONFIG=str(project / "alembic.ini"), MIGRATOR_DEPLOY_ID="rel 1")
    env["MIGRATOR_FLEET_MAX_FAILURES"] = "5"
    broken = fleet.databases[0]
    broken.query("CREATE TABLE cars (id int)")  # the first revision creates it: a conflict

    first = run_migrator("fleet", "upgrade", "head", "--json", env=env, timeout=300)

    assert first.status == 1, first.stderr[-3000:]
    rows = ledger_rows(first.stdout)
    failed = rows.pop(broken.name)
    assert (failed["revision"], failed["outcome"]) == (FIRST, "failed")
    assert 'relation "cars" already exists' in failed["detail"]
    applied = {(row["revision"], row["outcome"], row["deploy"]) for row in rows.values()}
    assert applied == {(HEAD, "applied", "rel 1")}

    broken.query("DROP TABLE cars")
    fleet.write(
        [database.name for database in fleet.databases[1:]] + [f"schema={fleet.schemas[0]}"]
    )
    again_env = {**env, "MIGRATOR_DEPLOY_ID": "rel 2"}
    again = run_migrator("fleet", "upgrade", "head", "--json", env=again_env, timeout=300)
    assert again.status == 0, again.stderr[-3000:]
    assert again.stderr.count("nothing to do: at") == 3  # answered by the fleet's look
    assert ledger_rows(again.stdout) == rows

    edited = next((project / "alembic" / "versions").glob(f"{FIRST}_*.py"))
    edited.write_text(edited.read_text().replace('"cars"', '"automobiles"', 1))
    stopped = run_migrator("fleet", "upgrade", "head", "--json", env=env, timeout=300)

    assert stopped.status == 2, stopped.stderr[-3000:]
    assert "nothing to do: at" not in stopped.stderr
    assert {entry["exit_status"] for entry in targets_of(stopped.stdout).values()} == {2}
    assert stopped.stderr.count(f"revision {FIRST} was changed after it was applied") >= 3


def test_each_phase_reaches_every_database_and_schema_target_before_the_next(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    """examples/phases over a fleet: the pre phase everywhere (the rollout would go here),
    then the post phase everywhere; post first is refused on every target."""
    fleet = make_fleet(2, 2)
    env = fleet.env(MIGRATOR_CONFIG=str(ROOT / "examples" / "phases" / "alembic.ini"))
    env["MIGRATOR_FLEET_MAX_FAILURES"] = "10"

    too_soon = run_migrator("fleet", "upgrade", "--phase", "post", "--json", env=env, timeout=300)
    pre = run_migrator("fleet", "upgrade", "--phase", "pre", "--json", env=env, timeout=300)
    after_pre = revisions_of(fleet)
    post = run_migrator("fleet", "upgrade", "head", "--json", env={**env, "MIGRATOR_PHASE": "post"})

    assert too_soon.status == 2, too_soon.stderr[-3000:]
    assert {entry["exit_status"] for entry in targets_of(too_soon.stdout).values()} == {2}
    assert pre.status == 0, pre.stderr[-3000:]
    assert after_pre == ["5e1f0a2b7c39"] * 4
    assert post.status == 0, post.stderr[-3000:]
    assert revisions_of(fleet) == ["9a4d6c8e2f15"] * 4
    assert {entry["applied"] for entry in targets_of(post.stdout).values()} == {1}


def revisions_of(fleet: Fleet) -> list[str | None]:
    return [database.revision() for database in fleet.databases] + [
        fleet.schema_revision(schema) for schema in fleet.schemas
    ]


def test_the_first_failure_stops_new_targets_by_default(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    fleet = make_fleet(5, 0)
    broken = fleet.databases[1]
    broken.query("CREATE TABLE cars (id int)")
    env = fleet.env(MIGRATOR_FLEET_PARALLELISM="1")
    result = run_migrator("fleet", "upgrade", "head", "--json", env=env, timeout=300)

    assert result.status == 1
    statuses = [targets_of(result.stdout)[d.name]["status"] for d in fleet.databases]
    assert statuses == ["ok", "failed", "skipped", "skipped", "skipped"]
    assert "targets=5 ok=1 failed=1 skipped=3" in summary_line(result.stderr)
    assert [database.revision() for database in fleet.databases[2:]] == [None] * 3


def test_a_failed_canary_stops_the_fleet(make_fleet: Callable[[int, int], Fleet]) -> None:
    fleet = make_fleet(6, 0)
    canary = fleet.databases[1]
    canary.query("CREATE TABLE cars (id int)")
    env = fleet.env(MIGRATOR_FLEET_CANARY="2", MIGRATOR_FLEET_MAX_FAILURES="10")
    result = run_migrator("fleet", "upgrade", "head", "--json", env=env, timeout=300)

    assert result.status == 1
    statuses = [targets_of(result.stdout)[d.name]["status"] for d in fleet.databases]
    assert statuses == ["ok", "failed"] + ["skipped"] * 4
    assert "a canary target failed" in result.stderr
    assert [database.revision() for database in fleet.databases[2:]] == [None] * 4


def test_canary_only_migrates_the_canaries(make_fleet: Callable[[int, int], Fleet]) -> None:
    fleet = make_fleet(4, 0)
    env = fleet.env(MIGRATOR_FLEET_CANARY="1")
    result = run_migrator("fleet", "upgrade", "head", "--canary-only", env=env, timeout=300)

    assert result.status == 0, result.stderr[-3000:]
    assert "targets=1 ok=1" in summary_line(result.stderr)
    assert [database.revision() for database in fleet.databases] == [HEAD, None, None, None]


def test_concurrent_fleet_runs_never_migrate_a_tenant_twice(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    fleet = make_fleet(3, 3)
    env = fleet.env(**AUDITED, SAMPLE_SLEEP="1", MIGRATOR_FLEET_PARALLELISM="3")
    started = time.monotonic()
    runs = [start_migrator("fleet", "upgrade", "head", env=env) for _ in range(3)]
    results = [finish(run, started, timeout=300) for run in runs]

    assert [result.status for result in results] == [0, 0, 0], [r.stderr[-2000:] for r in results]
    for database in fleet.databases:
        assert fleet.applied(database) == AUDITED_ONCE
    for schema in fleet.schemas:
        assert fleet.applied(schema) == AUDITED_ONCE


@pytest.mark.both_drivers
def test_sigterm_stops_the_fleet_rolls_back_and_says_which_finished(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    fleet = make_fleet(4, 0)
    env = fleet.env(**AUDITED, SAMPLE_SLEEP="60", MIGRATOR_FLEET_PARALLELISM="2")
    started = time.monotonic()
    run = start_migrator("fleet", "upgrade", "head", "--json", env=env)
    read_until(run, "applied in")  # a1 committed somewhere; a2 sleeps
    time.sleep(1)
    run.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    result = finish(run, started, timeout=60)

    assert result.status == 143, result.stderr[-3000:]
    assert time.monotonic() - signalled < 12
    statuses = [targets_of(result.stdout)[d.name]["status"] for d in fleet.databases]
    assert statuses == ["interrupted", "interrupted", "skipped", "skipped"]
    assert "targets=4 ok=0 failed=2 skipped=2" in summary_line(result.stderr)
    for database in fleet.databases[:2]:
        assert fleet.applied(database) == {"a1a1a1a1a1a1": 1}  # a2 was rolled back
        assert database.advisory_locks() == 0
    assert [database.revision() for database in fleet.databases[2:]] == [None, None]


def test_a_pod_takes_its_share_of_the_targets(make_fleet: Callable[[int, int], Fleet]) -> None:
    fleet = make_fleet(7, 0)
    env = fleet.env(MIGRATOR_FLEET_SHARDS="3", JOB_COMPLETION_INDEX="1")
    result = run_migrator("fleet", "upgrade", "head", env=env, timeout=300)

    assert result.status == 0, result.stderr[-3000:]
    revisions = [database.revision() for database in fleet.databases]
    assert revisions == [None, HEAD, None, None, HEAD, None, None]
    assert "share 1 of 3" in result.stderr


def test_fleet_current_and_plan_report_each_target(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    fleet = make_fleet(2, 1)
    fleet.write([fleet.databases[0].name])
    assert run_migrator("fleet", "upgrade", env=fleet.env(), timeout=300).status == 0
    fleet.write([fleet.databases[0].name, fleet.databases[1].name, f"schema={fleet.schemas[0]}"])

    current = run_migrator("fleet", "current", "--json", env=fleet.env(), timeout=300)
    plan = run_migrator("fleet", "plan", "upgrade", "head", "--json", env=fleet.env(), timeout=300)

    assert current.status == 0, current.stderr[-3000:]
    entries = targets_of(current.stdout)
    assert entries[fleet.databases[0].name]["from"] == HEAD
    assert entries[fleet.databases[1].name]["from"] == "base"
    assert plan.status == 0, plan.stderr[-3000:]
    planned = targets_of(plan.stdout)
    assert "revisions" not in planned[fleet.databases[0].name]
    assert len(planned[f"schema={fleet.schemas[0]}"]["revisions"]) == 4  # type: ignore[arg-type]


def test_urls_as_targets_never_show_their_password(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    fleet = make_fleet(2, 0)
    fleet.write([database.url for database in fleet.databases])
    env = {"MIGRATOR_FLEET_FILE": str(fleet.targets_file)}
    # The fleet's own flag reaches each target's run: every line is JSON.
    result = run_migrator(
        "--log-format", "json", "fleet", "upgrade", "head", "--json", env=env, timeout=300
    )

    assert result.status == 0, result.stderr[-3000:]  # run_migrator checks every spelling
    assert PASSWORD not in result.output
    names = list(targets_of(result.stdout))
    # Named as written, with the password hidden.
    assert names == [
        f"postgresql://{ROLE}:***@{database.url.split('@')[1]}" for database in fleet.databases
    ]
    tenants = {json.loads(line).get("tenant") for line in result.stderr.splitlines()}
    assert set(names) <= tenants
    assert [database.revision() for database in fleet.databases] == [HEAD, HEAD]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["tenant_a", "tenant_b", "tenant_a"], "line 3: tenant_a is line 1 again"),
        (["tenant_a", "tenant a"], "line 2: 'tenant a' is not a database name"),
        (["schema=Bad-Name"], "line 1: 'Bad-Name' is not a plain schema name"),
        # PostgreSQL would cut it to 63 bytes, and migrate another database.
        (["tenant_a", "t" * 64], "line 2: the database name is 64 bytes"),
        (["postgresql://u:Sup3r@Secret@db/x"], "line 1: more than one @ before the host"),
        (["# nothing but a comment", ""], "names no target"),
    ],
)
def test_a_bad_targets_file_is_refused_before_anything_runs(
    database: Database, tmp_path: Path, lines: list[str], message: str
) -> None:
    targets = tmp_path / "targets"
    targets.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {**database.env, "MIGRATOR_FLEET_FILE": str(targets)}
    result = run_migrator("fleet", "upgrade", "head", env=env)

    assert result.status == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Sup3r" not in result.output and "Secret@db" not in result.output
    assert database.tables() == set()


@pytest.mark.parametrize("system_identifier", ["readable", "revoked"])
def test_a_schema_target_and_a_url_into_that_schema_are_one_tenant_and_refused(
    make_fleet: Callable[[int, int], Fleet], system_identifier: str
) -> None:
    # Different lines, different lock keys (the schema's, the database's): both would run
    # at once on one tenant. What the server says they reached is the same.
    fleet = make_fleet(0, 1)
    (schema,) = fleet.schemas
    if system_identifier == "revoked":  # as a managed service may: the start time tells
        admin = sa.create_engine(fleet.server.admin.url.set(database=fleet.home.name))
        with admin.begin() as connection:
            connection.execute(
                sa.text("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
            )
        admin.dispose()
        assert fleet.home.query(
            "SELECT has_function_privilege('pg_control_system()', 'EXECUTE')"
        ) == [(False,)]
    into_schema = f"{fleet.home.url}?options=-csearch_path%3D{schema}"
    fleet.write([f"schema={schema}", "# the same tenant, spelled as a URL", into_schema])
    result = run_migrator("fleet", "upgrade", "head", env=fleet.env(), timeout=120)

    assert result.status == 2, result.stderr[-3000:]
    (error,) = [line for line in result.stderr.splitlines() if "ERROR" in line]
    masked = f"postgresql://{ROLE}:***@{into_schema.split('@')[1]}"
    assert f"line 3: {masked} is the tenant of line 1 (schema={schema}) again" in error
    assert f"schema {schema} of database {fleet.home.name}" in error
    assert PASSWORD not in result.output  # run_migrator checks every spelling too
    assert "migration lock" not in result.stderr and "summary" not in result.stderr
    assert fleet.schema_revision(schema) is None  # its version table is not there
    assert fleet.home.tables() == set()


def test_one_database_spelled_two_ways_is_one_tenant_and_refused(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    fleet = make_fleet(1, 0)
    (tenant,) = fleet.databases
    port = fleet.server.port
    # Docker publishes the test server's port on every address of this machine: both
    # spellings reach it, here and on a bare CI machine (a failure here is the fixture's).
    for host in ("localhost", "127.0.0.1"):
        socket.create_connection((host, port), timeout=2).close()
    url = tenant.url.replace(f"@{fleet.server.host}:", "@{}:", 1)
    first, second = url.format("localhost"), url.format("127.0.0.1") + "?sslmode=prefer"
    fleet.write([first, second])
    result = run_migrator("fleet", "upgrade", "head", env=fleet.env(), timeout=120)

    assert result.status == 2, result.stderr[-3000:]
    first, second = (
        f"postgresql://{ROLE}:***@{spelled.split('@')[1]}" for spelled in (first, second)
    )
    assert f"line 2: {second} is the tenant of line 1 ({first}) again" in result.stderr
    assert tenant.revision() is None and tenant.tables() == set()


def test_schemas_of_one_database_and_databases_of_one_server_are_tenants_of_their_own(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    # The configured database itself (its public schema), two schemas in it, two databases
    # beside it: five tenants on one server, none refused, every command runs.
    fleet = make_fleet(2, 2)
    lines = [fleet.home.name, *(d.name for d in fleet.databases)]
    lines += [f"schema={schema}" for schema in fleet.schemas]
    fleet.write(lines)
    result = run_migrator("fleet", "upgrade", "head", "--json", env=fleet.env(), timeout=300)

    assert result.status == 0, result.stderr[-3000:]
    assert "targets=5 ok=5 failed=0 skipped=0" in summary_line(result.stderr)
    assert [fleet.home.revision(), *(d.revision() for d in fleet.databases)] == [HEAD] * 3
    assert [fleet.schema_revision(schema) for schema in fleet.schemas] == [HEAD] * 2
    current = run_migrator("fleet", "current", "--json", env=fleet.env(), timeout=300)
    assert current.status == 0, current.stderr[-3000:]
    assert {entry["from"] for entry in targets_of(current.stdout).values()} == {HEAD}


def test_sigterm_before_any_target_starts_exits_143_with_the_summary(
    make_fleet: Callable[[int, int], Fleet], tmp_path: Path
) -> None:
    # 10,000 schema targets: the look at each (one connection and one query) takes longer
    # than the first progress line, and no target has started when the signal comes.
    fleet = make_fleet(0, 0)
    fleet.write([f"schema=tenant_{number:05d}" for number in range(10_000)])
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    env = fleet.env(MIGRATOR_TERMINATION_LOG=str(termination_log))
    started = time.monotonic()
    run = start_migrator("fleet", "upgrade", "head", env=env)
    read = read_until(run, "fleet: looked at ", timeout=120)
    run.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    result = finish(run, started, timeout=60)

    assert result.status == 143, result.stderr[-3000:]
    assert time.monotonic() - signalled < 10
    assert re.search(r"looked at \d+ of 10000 target\(s\), 0 already at the target", "".join(read))
    line = summary_line(result.stderr)
    assert "targets=10000 ok=0 failed=0 skipped=10000" in line and "status=interrupted" in line
    assert termination_log.read_text(encoding="utf-8") == line.split(" INFO    ")[1] + "\n"
    assert "interrupted by SIGTERM; fleet: 0 target(s) failed or interrupted" in result.stderr
    assert "[schema=tenant_" not in result.stderr.replace("skipped", "")  # none ran
    assert fleet.home.query("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant_%'") == [
        (0,)
    ]


def test_sigterm_while_a_target_is_stalled_exits_143_and_reports_the_target_killed(
    make_fleet: Callable[[int, int], Fleet], stall_proxy: Callable[..., Proxy]
) -> None:
    # The target cannot roll back over a stalled network: the fleet kills it after its grace
    # period, says so in the report (interrupted, exit 137), and exits 143 itself.
    fleet = make_fleet(1, 0)
    (tenant,) = fleet.databases
    proxy = stall_proxy(tenant)
    fleet.write([proxy.url])
    env = fleet.env(**AUDITED, SAMPLE_SLEEP="60", MIGRATOR_NETWORK_TIMEOUT="30")
    started = time.monotonic()
    run = start_migrator("fleet", "upgrade", "head", "--json", env=env)
    read_until(run, "applied in")  # a1 committed; a2 sleeps
    proxy.stall()
    run.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    result = finish(run, started, timeout=60)

    assert result.status == 143, result.stderr[-3000:]
    assert time.monotonic() - signalled < 10
    (entry,) = targets_of(result.stdout).values()
    assert (entry["status"], entry["exit_status"]) == ("interrupted", 137)
    line = summary_line(result.stderr)
    assert "targets=1 ok=0 failed=1 skipped=0" in line and "status=interrupted" in line
    proxy.close()  # the server sees the client gone and rolls back what was in flight
    deadline = time.monotonic() + 30
    while tenant.advisory_locks() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert tenant.advisory_locks() == 0
    # a2 was rolled back. ("applied in" is logged as a1's step ends, just before its commit:
    # the stall may take a1's commit with it too.)
    assert tenant.revision() in ("a1a1a1a1a1a1", None)


def test_a_budget_of_one_stops_new_targets_and_lets_the_running_ones_finish(
    make_fleet: Callable[[int, int], Fleet],
) -> None:
    # Every target fails (a3), after a 2 s a2: the first four run at once, so all four are
    # running when the first fails. They finish (each fails, rolled back to a2); no fifth
    # starts: MAX_FAILURES + PARALLELISM - 1 = 4 failures at most, as the README says.
    fleet = make_fleet(12, 0)
    env = fleet.env(
        **AUDITED,
        SAMPLE_SLEEP="2",
        SAMPLE_FAIL="1",
        MIGRATOR_FLEET_PARALLELISM="4",
        MIGRATOR_FLEET_MAX_FAILURES="1",
    )
    result = run_migrator("fleet", "upgrade", "head", "--json", env=env, timeout=300)

    assert result.status == 1, result.stderr[-3000:]
    statuses = [targets_of(result.stdout)[d.name]["status"] for d in fleet.databases]
    assert statuses == ["failed"] * 4 + ["skipped"] * 8
    assert "targets=12 ok=0 failed=4 skipped=8" in summary_line(result.stderr)
    for database in fleet.databases[:4]:
        assert fleet.applied(database) == {"a1a1a1a1a1a1": 1, "a2a2a2a2a2a2": 1}
    assert [database.revision() for database in fleet.databases[4:]] == [None] * 8
