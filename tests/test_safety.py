"""The safety report against a real PostgreSQL: what each revision locks, rewrites and scans,
measured on a scratch database and weighed with the live tables (tests/projects/safety_probe).
Here measured at deploy (MIGRATOR_SAFETY_MEASURE=deploy), the measurement itself under test;
measured at build and weighed at deploy: tests/test_safety_build.py.

The lock modes asserted are the ones PostgreSQL documents for each statement ("Explicit
Locking", ALTER TABLE, CREATE INDEX): the measurement must agree with them.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import PROJECTS, Database, Server, finish, run_migrator, start_migrator, wait_for_line

PROBE = PROJECTS / "safety_probe" / "alembic.ini"
AUDITED = PROJECTS / "audited" / "alembic.ini"  # a2 sleeps SAMPLE_SLEEP s; a3 fails on SAMPLE_FAIL
ROWS = 200_000


def probe_env(database: Database, **extra: str) -> dict[str, str]:
    return {
        **database.env,
        "MIGRATOR_CONFIG": str(PROBE),
        "MIGRATOR_SAFETY_MEASURE": "deploy",
        **extra,
    }


def scratch_databases(server: Server) -> list[str]:
    with server.admin.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'migrator_scratch_%'")
        )
        return [row[0] for row in rows]


@pytest.fixture
def at_p1(database: Database) -> Database:
    """The probe database at its first revision, with no rows."""
    result = run_migrator("upgrade", "p1", env=probe_env(database, MIGRATOR_SAFETY="off"))
    assert result.status == 0, result.output
    return database


@pytest.fixture
def large(at_p1: Database) -> Database:
    """The probe database at its first revision, `accounts` with ROWS rows, analyzed."""
    at_p1.query(
        "INSERT INTO accounts SELECT g, NULL, 'user' || g || '@example.com' "
        f"FROM generate_series(1, {ROWS}) g"
    )
    at_p1.query("ANALYZE accounts")
    return at_p1


def findings(result: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The plan's findings by (revision, rule). Under MIGRATOR_SAFETY=warn (the default) a
    plan reports its findings and exits 0, error-level ones included."""
    assert result.status == 0, result.output
    report = json.loads(result.stdout)["safety"]
    return {(f["revision"], f["rule"]): f for f in report["findings"]}


def test_verify_json_carries_what_each_revision_measurably_did(database: Database) -> None:
    result = run_migrator("verify", "--json", env=probe_env(database))

    assert result.status == 0, result.output
    effects = {s["revision"]: s["effects"] for s in json.loads(result.stdout)["stairs"]}
    accounts, owners = "public.accounts", "public.owners"
    assert effects["p1"]["created"] == [accounts, owners] and effects["p1"]["locks"] == {}
    # ALTER COLUMN TYPE: ACCESS EXCLUSIVE, and a new relfilenode (a rewrite), even when empty.
    assert effects["p2"]["locks"] == {accounts: "AccessExclusiveLock"}
    assert effects["p2"]["rewritten"] == [accounts]
    # CREATE INDEX: SHARE on the table.
    assert effects["p3"]["locks"] == {accounts: "ShareLock"}
    assert effects["p3"]["indexes"] == [{"table": accounts, "index": "public.accounts_email"}]
    assert effects["p3"]["rewritten"] == []
    # ADD FOREIGN KEY: SHARE ROW EXCLUSIVE on both tables; validated at once.
    assert effects["p4"]["locks"] == {
        accounts: "ShareRowExclusiveLock",
        owners: "ShareRowExclusiveLock",
    }
    assert effects["p4"]["validated"] == [{"table": accounts, "constraint": "accounts_owner"}]
    # SET NOT NULL: ACCESS EXCLUSIVE and a scan, no rewrite.
    assert effects["p5"]["locks"] == {accounts: "AccessExclusiveLock"}
    assert effects["p5"]["not_null"] == [{"table": accounts, "column": "email"}]
    assert effects["p5"]["rewritten"] == []
    # ADD COLUMN (nullable, no default): ACCESS EXCLUSIVE, catalog only.
    assert effects["p6"]["locks"] == {accounts: "AccessExclusiveLock"}
    assert (effects["p6"]["rewritten"], effects["p6"]["not_null"]) == ([], [])
    # UPDATE: ROW EXCLUSIVE.
    assert effects["p7"]["locks"] == {accounts: "RowExclusiveLock"}
    assert effects["p7"]["changed_rows"] == [accounts]
    # CREATE INDEX CONCURRENTLY in an autocommit block: nothing held at commit, not flagged.
    assert effects["p8"]["outside_transaction"] is True
    assert effects["p8"]["indexes"] == [] and effects["p8"]["locks"] == {}
    assert all(not e["outside_transaction"] for r, e in effects.items() if r != "p8")


def test_plan_safety_weighs_each_finding_with_the_live_table(
    server: Server, large: Database
) -> None:
    result = run_migrator("plan", "upgrade", "head", "--safety", "--json", env=probe_env(large))

    found = findings(result)
    severities = {key: finding["severity"] for key, finding in found.items()}
    assert severities == {
        ("p2", "table-rewrite"): "error",
        ("p3", "index-without-concurrently"): "error",
        ("p4", "validated-constraint"): "error",
        ("p5", "set-not-null"): "error",
        ("p6", "exclusive-lock"): "info",  # catalog only: information, not an error
        ("p7", "data-change"): "warning",  # how many rows is data-dependent: never an error
        ("p4", "exclusive-lock"): "info",  # owners: locked, but empty
    }
    rewrite = found[("p2", "table-rewrite")]
    assert rewrite["table"] == "public.accounts"
    assert abs(rewrite["rows"] - ROWS) < ROWS // 10  # pg_class.reltuples, an estimate
    assert rewrite["bytes"] > 10_000_000
    assert (rewrite["lock"], rewrite["blocks"]) == ("AccessExclusiveLock", "reads and writes")
    assert "backfill" in rewrite["safer"]
    index = found[("p3", "index-without-concurrently")]
    assert (index["lock"], index["blocks"]) == ("ShareLock", "writes")
    assert "CONCURRENTLY" in index["safer"]
    assert "NOT VALID" in found[("p4", "validated-constraint")]["safer"]
    assert found[("p4", "exclusive-lock")]["table"] == "public.owners"
    assert large.revision() == "p1"  # read-only on the real database
    assert scratch_databases(server) == []

    text = run_migrator("plan", "upgrade", "head", "--safety", env=probe_env(large))
    lines = [line for line in text.stdout.splitlines() if "public." in line]
    assert len(lines) == len(found)  # one line per finding
    assert any(
        line.strip().startswith("error   table-rewrite public.accounts (2")
        and "ACCESS EXCLUSIVE blocks reads and writes" in line
        for line in lines
    ), text.stdout
    assert "p8 runs statements outside a transaction" in text.stdout


def test_the_same_revisions_on_an_empty_table_are_information(at_p1: Database) -> None:
    result = run_migrator("plan", "upgrade", "head", "--safety", "--json", env=probe_env(at_p1))

    found = findings(result)
    assert ("p2", "table-rewrite") in found
    assert {finding["severity"] for finding in found.values()} == {"info"}


def test_thresholds_are_settings(large: Database) -> None:
    env = probe_env(large, MIGRATOR_SAFETY_WARN_ROWS="500000", MIGRATOR_SAFETY_ERROR_ROWS="900000")

    found = findings(run_migrator("plan", "upgrade", "p2", "--safety", "--json", env=env))

    assert found[("p2", "table-rewrite")]["severity"] == "info"


@pytest.mark.parametrize(
    ("allow", "allowed"),
    [
        ("table-rewrite:accounts", True),
        ("table-rewrite:owners", False),
        ("set-not-null:accounts", False),
    ],
)
def test_the_revision_opts_out_of_exactly_its_rule_and_table(
    large: Database, allow: str, allowed: bool
) -> None:
    env = probe_env(large, SAMPLE_ALLOW=allow)

    found = findings(run_migrator("plan", "upgrade", "head", "--safety", "--json", env=env))

    assert found[("p2", "table-rewrite")]["allowed"] is allowed
    others = [finding for key, finding in found.items() if key != ("p2", "table-rewrite")]
    assert not any(finding["allowed"] for finding in others)


def test_a_malformed_opt_out_is_a_usage_error(at_p1: Database) -> None:
    env = probe_env(at_p1, SAMPLE_ALLOW="rewrite-everything")

    result = run_migrator("plan", "upgrade", "head", "--safety", env=env)

    assert result.status == 2, result.output
    assert "p2_bigint.py: migrator_safety must be" in result.stderr


def test_block_refuses_error_findings_and_changes_nothing(server: Server, large: Database) -> None:
    planned = run_migrator(
        "plan", "upgrade", "head", "--safety", env=probe_env(large, MIGRATOR_SAFETY="block")
    )
    result = run_migrator("upgrade", "head", env=probe_env(large, MIGRATOR_SAFETY="block"))

    assert planned.status == 8, planned.output  # a pipeline can stop before the deploy

    assert result.status == 8, result.output
    assert "MIGRATOR_SAFETY=block: 4 error-level finding(s), nothing ran" in result.stderr
    for named in (
        "table-rewrite on public.accounts in p2",
        "index-without-concurrently on public.accounts in p3",
        "validated-constraint on public.accounts in p4",
        "set-not-null on public.accounts in p5",
    ):
        assert named in result.stderr
    assert "status=refused by safety" in result.stderr
    assert large.revision() == "p1"
    assert large.query(
        "SELECT data_type FROM information_schema.columns "
        "WHERE table_name = 'accounts' AND column_name = 'id'"
    ) == [("integer",)]
    assert large.query("SELECT indexname FROM pg_indexes WHERE tablename = 'accounts'") == [
        ("accounts_pkey",)
    ]
    assert scratch_databases(server) == []


def test_block_runs_a_risk_the_revision_accepts(large: Database) -> None:
    env = probe_env(large, MIGRATOR_SAFETY="block", SAMPLE_ALLOW="table-rewrite:accounts")

    result = run_migrator("upgrade", "p2", env=env)

    assert result.status == 0, result.output
    assert "(allowed by the revision)" in result.stderr
    assert large.revision() == "p2"


def test_warn_logs_the_findings_and_runs(large: Database) -> None:
    result = run_migrator("upgrade", "p3", env=probe_env(large))  # MIGRATOR_SAFETY=warn

    assert result.status == 0, result.output
    assert "safety: error   table-rewrite public.accounts" in result.stderr
    assert "safety: error   index-without-concurrently public.accounts" in result.stderr
    assert large.revision() == "p3"


def test_off_measures_nothing(server: Server, large: Database) -> None:
    result = run_migrator("upgrade", "p2", env=probe_env(large, MIGRATOR_SAFETY="off"))

    assert result.status == 0, result.output
    assert "safety" not in result.stderr and "scratch database" not in result.stderr


def test_a_bad_safety_setting_is_refused() -> None:
    result = run_migrator("upgrade", env={"MIGRATOR_SAFETY": "maybe"})

    assert result.status == 2
    assert "MIGRATOR_SAFETY: 'maybe' is not one of off, warn, block" in result.stderr


def test_the_example_tree_reads_as_a_reviewer_expects(database: Database) -> None:
    env = {**database.env, "MIGRATOR_SAFETY_MEASURE": "deploy"}
    assert run_migrator("upgrade", "0d25ea6c8183", env=env).status == 0
    database.query(
        "INSERT INTO cars (id, make, model) SELECT g, 'Make', 'model ' || g "
        "FROM generate_series(1, 20000) g"
    )
    database.query("ANALYZE cars")

    result = run_migrator("plan", "upgrade", "head", "--safety", "--json", env=env)

    found = findings(result)
    summary = {key: (f["table"], f["lock"], f["severity"]) for key, f in found.items()}
    assert summary == {
        # A nullable column with a constant default: catalog only (PostgreSQL 11+).
        ("4b1e7f3a9c20", "exclusive-lock"): ("public.cars", "AccessExclusiveLock", "info"),
        # The backfill: which rows depends on the data; 20,000 rows is past the warning line.
        ("8d2c5a61e0f4", "data-change"): ("public.cars", "RowExclusiveLock", "warning"),
        # services' foreign key locks cars against writes while it is created (empty: brief).
        ("c3f9b7d21a58", "exclusive-lock"): ("public.cars", "ShareRowExclusiveLock", "info"),
    }
    markdown = run_migrator("plan", "upgrade", "head", "--safety", "--markdown", env=env)
    assert markdown.status == 0, markdown.output
    assert "| severity | rule | table | rows | size | lock (blocks) |" in markdown.stdout
    assert "| warning | `data-change` | `public.cars` | 20,000 rows |" in markdown.stdout


def test_a_revision_that_fails_on_the_scratch_database_is_named(
    server: Server, database: Database
) -> None:
    env = {
        **database.env,
        "MIGRATOR_CONFIG": str(AUDITED),
        "MIGRATOR_SAFETY_MEASURE": "deploy",
        "SAMPLE_FAIL": "1",
    }

    planned = run_migrator("plan", "upgrade", "head", "--safety", env=env)
    warned = run_migrator("upgrade", "head", env=env)  # warn: skipped, then the real failure
    blocked = run_migrator("upgrade", "head", env={**env, "MIGRATOR_SAFETY": "block"})

    assert planned.status == 1, planned.output
    assert "measuring on the scratch database: a3a3a3a3a3a3 failed" in planned.stderr
    assert "safety report skipped (MIGRATOR_SAFETY=warn)" in warned.stderr
    assert warned.status == 1 and database.revision() == "a2a2a2a2a2a2"
    assert blocked.status == 1, blocked.output
    assert "applied in" not in blocked.stderr  # nothing ran on the real database
    assert scratch_databases(server) == []


def test_the_scratch_database_is_dropped_after_sigterm(server: Server, database: Database) -> None:
    env = {
        **database.env,
        "MIGRATOR_CONFIG": str(AUDITED),
        "MIGRATOR_SAFETY_MEASURE": "deploy",
        "SAMPLE_SLEEP": "60",
    }
    process = start_migrator("plan", "upgrade", "head", "--safety", env=env)
    wait_for_line(process, "scratch database")
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    result = finish(process, sent, timeout=30)

    assert result.status == 143, result.output
    assert "dropped" in result.stderr
    assert scratch_databases(server) == []
    assert database.tables() == set()
