"""Each command as a user runs it against a real PostgreSQL: exit status, stdout, the database."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, Database, run_alembic, run_migrator

# The core: each test on psycopg 3 and on psycopg2.
pytestmark = pytest.mark.both_drivers

HEAD = "c3f9b7d21a58"
EXAMPLE_REVISIONS = ["0d25ea6c8183", "4b1e7f3a9c20", "8d2c5a61e0f4", HEAD]


def test_upgrade_head_migrates_a_fresh_database(database: Database) -> None:
    result = run_migrator("upgrade", "head", env=database.env)

    assert result.status == 0, result.stderr
    assert database.revision() == HEAD
    assert database.tables() == {"alembic_version", "cars", "services"}
    indexes = {
        row[0]: row[1]
        for row in database.query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'cars'"
        )
    }
    assert "UNIQUE" in indexes["ix_cars_model"] and "ix_cars_id" in indexes
    for position, revision in enumerate(EXAMPLE_REVISIONS, start=1):
        assert f"[{position}/4] {revision}" in result.stderr
    assert "summary command=upgrade from=base to=c3f9b7d21a58 applied=4" in result.stderr
    assert "status=ok" in result.stderr.splitlines()[-1]


def test_upgrade_without_arguments_follows_the_environment(database: Database) -> None:
    result = run_migrator(env={**database.env, "MIGRATOR_TARGET": "4b1e7f3a9c20"})

    assert result.status == 0, result.stderr
    assert database.revision() == "4b1e7f3a9c20"


def test_no_op_upgrade_says_nothing_to_do(database: Database) -> None:
    run_migrator("upgrade", env=database.env)
    result = run_migrator("upgrade", "head", env=database.env)

    assert result.status == 0
    assert "nothing to do: the database is at c3f9b7d21a58" in result.stderr
    assert "applied=0" in result.stderr
    assert "migration lock" not in result.stderr


def test_relative_targets_move_one_step(database: Database) -> None:
    up = run_migrator("upgrade", "+2", env=database.env)
    assert up.status == 0, up.output
    assert database.revision() == "4b1e7f3a9c20"
    assert "2 revision(s) to upgrade from base to 4b1e7f3a9c20" in up.stderr
    down = run_migrator("downgrade", "-1", env=database.env)
    assert down.status == 0, down.output
    assert database.revision() == "0d25ea6c8183"
    assert "1 revision(s) to downgrade from 4b1e7f3a9c20 to 0d25ea6c8183" in down.stderr
    # A downgrade says what it reverted.
    summary = down.stderr.splitlines()[-1]
    assert "from=4b1e7f3a9c20 to=0d25ea6c8183 reverted=1 seconds=" in summary
    assert "applied=" not in summary


def test_downgrade_reverses_every_revision(database: Database) -> None:
    run_migrator("upgrade", "head", env=database.env)
    database.query("INSERT INTO cars (make, model) VALUES ('Tesla', 'Model 3')")
    result = run_migrator("downgrade", "base", env=database.env)

    assert result.status == 0, result.stderr
    assert database.tables() == {"alembic_version"}
    assert database.revision() is None
    assert "[4/4] 0d25ea6c8183 (initial) reverted" in result.stderr
    assert " from=c3f9b7d21a58 to=base reverted=4 " in result.stderr


def test_data_migration_backfills_and_reverts(database: Database) -> None:
    run_migrator("upgrade", "4b1e7f3a9c20", env=database.env)
    database.query("INSERT INTO cars (make, model) VALUES ('Tesla', 'Model Y'), ('Ford', 'Ka')")

    run_migrator("upgrade", "8d2c5a61e0f4", env=database.env)
    after_upgrade = dict(database.query("SELECT make, fuel_type FROM cars"))
    run_migrator("downgrade", "4b1e7f3a9c20", env=database.env)
    after_downgrade = dict(database.query("SELECT make, fuel_type FROM cars"))

    assert after_upgrade == {"Tesla": "electric", "Ford": "petrol"}
    assert after_downgrade == {"Tesla": "petrol", "Ford": "petrol"}


def test_downgrade_from_the_environment_needs_allow_downgrade(database: Database) -> None:
    run_migrator("upgrade", "head", env=database.env)
    env = {**database.env, "MIGRATOR_COMMAND": "downgrade", "MIGRATOR_TARGET": "base"}

    refused = run_migrator(env=env)
    allowed = run_migrator(env={**env, "MIGRATOR_ALLOW_DOWNGRADE": "true"})

    assert refused.status == 2
    assert "MIGRATOR_ALLOW_DOWNGRADE=true" in refused.stderr
    assert allowed.status == 0, allowed.stderr
    assert database.revision() is None


def test_current_reports_revision_and_head(database: Database) -> None:
    before = run_migrator("current", env=database.env)
    run_migrator("upgrade", "head", env=database.env)
    after = run_migrator("current", "--json", env=database.env)

    assert before.status == 0
    assert before.stdout.strip() == "base (not head: 4 revision(s) to apply up to c3f9b7d21a58)"
    assert json.loads(after.stdout) == {
        "current": [HEAD],
        "heads": [HEAD],
        "at_head": True,
        "unknown": [],
        "pending": 0,
    }


def test_history_marks_applied_revisions(database: Database) -> None:
    run_migrator("upgrade", "4b1e7f3a9c20", env=database.env)

    text = run_migrator("history", env=database.env)
    entries = json.loads(run_migrator("history", "--json", env=database.env).stdout)

    assert text.stdout.splitlines() == [
        "applied  0d25ea6c8183  initial",
        "applied  4b1e7f3a9c20  add fuel_type to cars",
        "pending  8d2c5a61e0f4  backfill electric fuel_type",
        "pending  c3f9b7d21a58  add services (head)",
    ]
    assert [entry["revision"] for entry in entries] == EXAMPLE_REVISIONS
    assert [entry["applied"] for entry in entries] == [True, True, False, False]


def test_history_without_a_database_lists_revisions() -> None:
    result = run_migrator("history")

    assert result.status == 0, result.stderr
    assert result.stdout.splitlines()[0] == "0d25ea6c8183  initial"


def test_plan_lists_what_would_run_and_changes_nothing(database: Database) -> None:
    run_migrator("upgrade", "4b1e7f3a9c20", env=database.env)

    text = run_migrator("plan", "upgrade", "head", env=database.env)
    down = json.loads(run_migrator("plan", "downgrade", "base", "--json", env=database.env).stdout)

    assert text.status == 0
    assert text.stdout.splitlines() == [
        "upgrade from 4b1e7f3a9c20 to c3f9b7d21a58 (head): 2 revision(s)",
        "  1. 8d2c5a61e0f4  backfill electric fuel_type",
        "  2. c3f9b7d21a58  add services",
    ]
    # The summary names where the plan leads, resolved, not `-`.
    assert " command=plan from=4b1e7f3a9c20 to=c3f9b7d21a58 " in text.stderr
    assert [step["revision"] for step in down["revisions"]] == ["4b1e7f3a9c20", "0d25ea6c8183"]
    assert (down["to"], down["reaches"]) == ("base", [])
    assert database.revision() == "4b1e7f3a9c20"
    back_one = run_migrator("plan", "downgrade", "-1", env=database.env)
    assert back_one.stdout.splitlines()[0] == (
        "downgrade from 4b1e7f3a9c20 to 0d25ea6c8183 (-1): 1 revision(s)"
    )
    assert " to=0d25ea6c8183 " in back_one.stderr


def test_offline_sql_needs_no_database() -> None:
    upgrade = run_migrator("upgrade", "head", "--sql")
    downgrade = run_migrator("downgrade", f"{HEAD}:4b1e7f3a9c20", "--sql")

    assert upgrade.status == 0, upgrade.stderr
    assert "CREATE TABLE cars" in upgrade.stdout
    assert "CREATE UNIQUE INDEX ix_cars_model ON cars (model)" in upgrade.stdout
    assert upgrade.stdout.count("COMMIT;") == 4  # a transaction per revision, as online
    assert "DROP TABLE services" in downgrade.stdout
    assert "WHERE make IN ('Tesla', 'Polestar', 'Rivian', 'Lucid')" in downgrade.stdout
    assert "CREATE TABLE" not in downgrade.stdout


def test_json_logs_are_one_object_per_line(database: Database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    env = {
        **database.env,
        "MIGRATOR_LOG_FORMAT": "json",
        "MIGRATOR_TERMINATION_LOG": str(termination_log),
    }

    result = run_migrator("upgrade", "head", env=env)

    events = [json.loads(line) for line in result.stderr.splitlines()]
    # An ISO 8601 UTC time to the millisecond, as log pipelines parse it.
    iso_utc_ms = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
    assert all(iso_utc_ms.fullmatch(event["time"]) for event in events), events
    revisions = [event for event in events if event.get("event") == "revision"]
    assert [event["revision"] for event in revisions] == EXAMPLE_REVISIONS
    assert all(event["total"] == 4 and event["seconds"] >= 0 for event in revisions)
    summary = events[-1]
    assert summary["event"] == "summary"
    assert (summary["command"], summary["from"], summary["to"]) == ("upgrade", "base", HEAD)
    assert summary["applied"] == 4 and summary["status"] == "ok"
    assert termination_log.read_text().startswith("summary command=upgrade from=base to=")


def test_version_and_module_entry_point() -> None:
    result = run_migrator("--version")

    assert result.status == 0
    assert result.stdout.startswith("migrator 0.1.0 (alembic ")


def test_wait_command_returns_once_the_database_answers(database: Database) -> None:
    result = run_migrator("wait", env=database.env)

    assert result.status == 0, result.stderr
    assert "database ready after" in result.stderr
    assert database.tables() == set()


def test_the_tutorial_workflow_works_with_plain_alembic(database: Database) -> None:
    """`alembic upgrade head`, `alembic check` (autogenerate finds no change), `downgrade -1`."""

    upgraded = run_alembic("upgrade", "head", cwd=ROOT, env=database.env)
    checked = run_alembic("check", cwd=ROOT, env=database.env)
    downgraded = run_alembic("downgrade", "-1", cwd=ROOT, env=database.env)

    assert upgraded.returncode == 0, upgraded.stderr
    assert checked.returncode == 0, checked.stderr
    assert "No new upgrade operations detected" in checked.stdout + checked.stderr
    assert downgraded.returncode == 0, downgraded.stderr
    assert database.revision() == "8d2c5a61e0f4"
    assert "services" not in database.tables()


def test_the_summary_file_says_what_ran_as_json(database: Database, tmp_path: Path) -> None:
    summary_file = tmp_path / "summary.json"
    env = {**database.env, "MIGRATOR_SUMMARY_FILE": str(summary_file)}
    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 0, result.output
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "ok" and summary["from"] == "base"
    assert summary["to"] == database.revision()
    assert summary["applied"] == len(summary["revisions"]) == 4
    assert [entry["direction"] for entry in summary["revisions"]] == ["upgrade"] * 4
    assert summary["revisions"][-1]["revision"] == database.revision()

    planned = run_migrator("plan", "downgrade", "base", env=env)
    assert planned.status == 0, planned.output
    plan = json.loads(summary_file.read_text())
    assert plan["revisions"][0]["revision"] == database.revision()
    assert len(plan["revisions"]) == 4
