"""Measured where the project is built, weighed at every deploy: `verify` (the command a team
adds to CI) records what each revision measurably does in the project's manifest; a deploy
weighs the pending revisions' recorded effects with the live table sizes, and creates
nothing on the server it migrates (asserted on pg_database and on the server's own log of
every DDL statement, log_statement = ddl).

The project is a copy of tests/projects/safety_probe, as a team's checkout would be.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    PROJECTS,
    ROLE,
    Database,
    Server,
    run_migrator,
    start_migrator,
    wait_for_line,
)

ROWS = 1000
# Small thresholds: ROWS live rows are an error, without a slow insert of a million.
THRESHOLDS = {"MIGRATOR_SAFETY_WARN_ROWS": "10", "MIGRATOR_SAFETY_ERROR_ROWS": "100"}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The project as a team's checkout holds it: alembic.ini, env.py and the revisions."""
    # Without a manifest another test's verify may have left in the repository's copy.
    ignored = shutil.ignore_patterns("migrator-manifest.json", "__pycache__")
    shutil.copytree(PROJECTS / "safety_probe", tmp_path / "project", ignore=ignored)
    return tmp_path / "project" / "alembic.ini"


@pytest.fixture
def built(checkout: Path, database: Database) -> Path:
    """The checkout after CI's `migrator verify` (on a server of its own in CI; here the
    test server, where verify's scratch database comes and goes)."""
    result = run_migrator("verify", env={**database.env, "MIGRATOR_CONFIG": str(checkout)})
    assert result.status == 0, result.output
    assert result.stderr.count("database ready") == 1  # not again for the scratch process
    assert "summary command=verify from=base to=p8 applied=8 " in result.stderr
    assert f"their measured effects recorded in {checkout.parent / 'migrator-manifest.json'}" in (
        result.stdout
    )
    return checkout


def at_p1_with_rows(database: Database, ini: Path, schema: str | None = None) -> None:
    env = {**database.env, "MIGRATOR_CONFIG": str(ini), "MIGRATOR_SAFETY": "off"}
    if schema is not None:
        env["MIGRATOR_SCHEMA"] = schema
    assert run_migrator("upgrade", "p1", env=env).status == 0
    table = f'"{schema}".accounts' if schema else "accounts"
    database.query(
        f"INSERT INTO {table} SELECT g, NULL, 'u' || g FROM generate_series(1, {ROWS}) g"
    )
    database.query(f"ANALYZE {table}")


def databases(server: Server) -> set[str]:
    with server.admin.connect() as connection:
        return set(connection.execute(sa.text("SELECT datname FROM pg_database")).scalars())


def server_log(server: Server, since: float) -> str:
    logs = subprocess.run(
        ["docker", "logs", "--since", str(int(since) - 1), server.container_id],
        capture_output=True,
        text=True,
        check=True,
    )
    return logs.stdout + logs.stderr


def findings(stdout: str) -> dict[tuple[str, str], str]:
    report = json.loads(stdout)["safety"]
    return {(f["revision"], f["rule"]): f["severity"] for f in report["findings"]}


def test_a_deploy_weighs_what_verify_recorded_and_creates_nothing_on_the_server(
    server: Server, database: Database, built: Path
) -> None:
    at_p1_with_rows(database, built)
    with server.admin.connect() as connection:  # a superuser's setting
        connection.execute(sa.text(f'ALTER DATABASE "{database.name}" SET log_statement = ddl'))
    env = {**database.env, "MIGRATOR_CONFIG": str(built), **THRESHOLDS}
    before, started = databases(server), time.time()

    planned = run_migrator("plan", "upgrade", "head", "--safety", "--json", env=env)
    blocked = run_migrator("upgrade", "head", env={**env, "MIGRATOR_SAFETY": "block"})
    upgraded = run_migrator("upgrade", "p3", env=env)  # warn, the default

    assert planned.status == 0, planned.output
    assert findings(planned.stdout) == {
        ("p2", "table-rewrite"): "error",
        ("p3", "index-without-concurrently"): "error",
        ("p4", "validated-constraint"): "error",
        ("p5", "set-not-null"): "error",
        ("p6", "exclusive-lock"): "info",
        ("p7", "data-change"): "warning",
        ("p4", "exclusive-lock"): "info",
    }
    assert blocked.status == 8, blocked.output
    assert "4 error-level finding(s), nothing ran: table-rewrite on public.accounts in p2" in (
        blocked.stderr
    )
    assert upgraded.status == 0, upgraded.output
    assert "safety: error   table-rewrite public.accounts (1,000 rows" in upgraded.stderr
    assert database.revision() == "p3"
    for run in (planned, blocked, upgraded):
        assert "scratch database migrator_" not in run.stderr
        assert "not weighed" not in run.output
    # Nothing made on the server: no database came or went, and the only DDL the server
    # logged is the two revisions' own.
    assert databases(server) == before
    statements = [line for line in server_log(server, started).splitlines() if "statement:" in line]
    assert not any("DATABASE" in line for line in statements), statements
    assert [line.split("statement: ", 1)[1] for line in statements] == [
        "ALTER TABLE accounts ALTER COLUMN id TYPE bigint",
        "CREATE INDEX accounts_email ON accounts (email)",
    ]


def test_a_revision_changed_since_it_was_measured_is_named_and_block_refuses_it(
    database: Database, built: Path
) -> None:
    at_p1_with_rows(database, built)
    revision = built.parent / "alembic" / "versions" / "p6_nullable_column.py"
    revision.write_text(revision.read_text() + "\n# edited after CI measured it\n")
    env = {**database.env, "MIGRATOR_CONFIG": str(built), **THRESHOLDS}

    planned = run_migrator("plan", "upgrade", "head", "--safety", "--json", env=env)
    blocked = run_migrator("upgrade", "p6", env={**env, "MIGRATOR_SAFETY": "block"})
    refused_at = database.revision()
    warned = run_migrator("upgrade", "p6", env=env)  # warn, the default

    assert planned.status == 0, planned.output
    notes = json.loads(planned.stdout)["safety"]["notes"]
    assert notes[0] == (
        "not weighed: no effects measured for these revision files as they are now (in "
        "migrator-manifest.json: run `migrator verify` where the project is built, or set "
        "MIGRATOR_SAFETY_MEASURE=deploy): p6"
    )
    assert ("p2", "table-rewrite") in findings(planned.stdout)  # the others still weighed
    assert blocked.status == 8, blocked.output
    assert "nothing ran" in blocked.stderr and ": p6" in blocked.stderr
    assert refused_at == "p1"
    assert warned.status == 0, warned.output
    assert "WARNING safety: note: not weighed" in warned.stderr
    assert database.revision() == "p6"


def test_no_manifest_names_every_pending_revision_in_one_line(
    database: Database, checkout: Path
) -> None:
    env = {**database.env, "MIGRATOR_CONFIG": str(checkout)}
    result = run_migrator("plan", "upgrade", "p3", "--safety", env=env)

    assert result.status == 0, result.output
    (line,) = [line for line in result.stdout.splitlines() if "not weighed" in line]
    assert line.endswith("MIGRATOR_SAFETY_MEASURE=deploy): p1, p2, p3"), line
    assert "scratch database migrator_" not in result.stderr


@pytest.mark.parametrize("schema", ["tenant_a", "Tenant-1"])
def test_effects_measured_in_public_are_weighed_in_a_tenants_schema(
    server: Server, database: Database, built: Path, schema: str
) -> None:
    database.query(f'CREATE SCHEMA "{schema}"')
    at_p1_with_rows(database, built, schema)
    env = {**database.env, "MIGRATOR_CONFIG": str(built), "MIGRATOR_SCHEMA": schema}
    before = databases(server)

    result = run_migrator("plan", "upgrade", "p2", "--safety", "--json", env={**env, **THRESHOLDS})

    assert result.status == 0, result.output
    (finding,) = json.loads(result.stdout)["safety"]["findings"]
    qualifier = schema if schema.islower() else f'"{schema}"'
    assert (finding["table"], finding["rule"], finding["rows"]) == (
        f"{qualifier}.accounts",
        "table-rewrite",
        ROWS,
    )
    assert databases(server) == before


def test_manifest_measure_records_effects_beside_what_the_fast_path_reads(
    database: Database, checkout: Path
) -> None:
    env = {**database.env, "MIGRATOR_CONFIG": str(checkout)}
    written = run_migrator("manifest", "--measure", env=env)
    at_p1_with_rows(database, checkout)
    planned = run_migrator("plan", "upgrade", "p2", "--safety", "--json", env={**env, **THRESHOLDS})
    assert run_migrator("upgrade", "head", env={**env, "MIGRATOR_SAFETY": "off"}).status == 0
    noop = run_migrator("upgrade", "head", env={**env, "MIGRATOR_LOG_LEVEL": "DEBUG"})

    assert written.status == 0, written.output
    assert "migrator_scratch_manifest_" in written.stderr  # measured on a scratch database
    assert findings(planned.stdout) == {("p2", "table-rewrite"): "error"}
    assert noop.status == 0 and "answered by the manifest" in noop.stderr, noop.output


def test_a_killed_measurements_leftover_is_dropped_by_the_next_run_that_makes_one(
    server: Server, database: Database, checkout: Path
) -> None:
    env = {
        **database.env,
        "MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini"),
        "SAMPLE_SLEEP": "60",
    }
    killed = start_migrator("verify", env=env)
    wait_for_line(killed, "[1/3]")  # a2's upgrade, sleeping on the scratch database, is next
    killed.kill()  # SIGKILL: no time to drop it
    killed.wait()
    (left,) = [name for name in databases(server) if name.startswith("migrator_scratch_verify_")]
    ended_sessions_of(server, left)  # its scratch process's, orphaned
    # An hour passing, simulated: the name carries the time it was made.
    made_at, random = left.rsplit("_", 2)[1:]
    an_hour_ago = f"migrator_scratch_verify_{int(made_at) - 3700}_{random}"
    recent = f"migrator_scratch_verify_{int(time.time()) - 60}_0123abcd"
    older = "migrator_verify_0123456789ab"
    with server.admin.connect() as connection:
        connection.execute(sa.text(f'ALTER DATABASE "{left}" RENAME TO "{an_hour_ago}"'))
        for name in (recent, older):
            connection.execute(sa.text(f'CREATE DATABASE "{name}" OWNER {ROLE}'))

    result = run_migrator("verify", env={**database.env, "MIGRATOR_CONFIG": str(checkout)})

    assert result.status == 0, result.output
    assert f"scratch database {an_hour_ago} left by a killed run: dropped" in result.stderr
    assert f"left by an older migrator, with no session: {older}" in result.stderr
    remaining = databases(server)
    assert an_hour_ago not in remaining
    assert {recent, older} <= remaining  # too recent to be a leftover; no age to go by
    with server.admin.connect() as connection:
        for name in (recent, older):
            connection.execute(sa.text(f'DROP DATABASE "{name}"'))
    assert not [name for name in databases(server) if name.startswith("migrator_scratch_")]


def ended_sessions_of(server: Server, name: str) -> None:
    deadline = time.monotonic() + 30
    with server.admin.connect() as connection:
        while time.monotonic() < deadline:
            ended = connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"
                ),
                {"name": name},
            ).all()
            if not ended:
                return
            time.sleep(0.2)
    raise AssertionError(f"sessions of {name} still there")


def test_verify_without_createdb_names_the_grant_and_the_setting(
    server: Server, database: Database, checkout: Path
) -> None:
    with server.admin.connect() as connection:
        connection.execute(sa.text("DROP ROLE IF EXISTS no_createdb"))
        connection.execute(sa.text("CREATE ROLE no_createdb LOGIN PASSWORD 'plain'"))
    env = {
        **database.env_with(user="no_createdb", password="plain"),
        "MIGRATOR_CONFIG": str(checkout),
    }

    result = run_migrator("verify", env=env)

    assert result.status == 6, result.output
    error = result.stderr.strip().splitlines()[-2]  # the last is the summary
    assert error.endswith(
        "cannot create a scratch database: permission denied to create database: grant the "
        "role CREATEDB, or set MIGRATOR_VERIFY_URL to a database of its own for the "
        "scratch work"
    ), result.stderr
    assert "Traceback" not in result.output
