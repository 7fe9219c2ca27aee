"""The deploy ledger, as a platform team reads it: every revision's row with when, how long,
the outcome and the deploy, written with the revision; an edited applied revision stops the
next run; a database migrated by plain Alembic is adopted. Real PostgreSQL, the CLI as a
subprocess, the example project copied so a test may edit it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from conditions import OtherRole, superuser_engine
from conftest import ROOT, Database, run_alembic, run_migrator

from migrator.project_files import revision_checksum

pytestmark = pytest.mark.both_drivers

REVISIONS = ["0d25ea6c8183", "4b1e7f3a9c20", "8d2c5a61e0f4", "c3f9b7d21a58"]
HEAD = REVISIONS[-1]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example project (no manifest: the full path), its alembic.ini."""
    copy = tmp_path / "project"
    for part in ("alembic", "persistence"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "alembic.ini", copy / "alembic.ini")
    return copy / "alembic.ini"


def env_for(database: Database, project: Path, **extra: str) -> dict[str, str]:
    return {**database.env, "MIGRATOR_CONFIG": str(project), **extra}


def rows(database: Database) -> list[tuple[str, str, str]]:
    found = database.query("SELECT revision, direction, outcome FROM migrator_ledger ORDER BY id")
    return [tuple(row) for row in found]


def revision_file(project: Path, revision: str) -> Path:
    return next((project.parent / "alembic" / "versions").glob(f"{revision}_*.py"))


def test_each_revision_gets_a_row_with_the_deploy_and_the_version_table_agrees(
    database: Database, project: Path
) -> None:
    env = env_for(database, project, MIGRATOR_DEPLOY_ID="release 42", HOSTNAME="pod-abc")

    up = run_migrator("upgrade", "head", env=env)
    down = run_migrator("downgrade", "-1", env={**env, "MIGRATOR_ALLOW_DOWNGRADE": "true"})

    assert (up.status, down.status) == (0, 0), up.output + down.output
    assert rows(database) == [
        *[(revision, "upgrade", "applied") for revision in REVISIONS],
        (HEAD, "downgrade", "reverted"),
    ]
    detail = database.query(
        "SELECT deploy, host, migrator_version, seconds >= 0, finished_at >= started_at, "
        "length(checksum) FROM migrator_ledger"
    )
    assert {tuple(row) for row in detail} == {("release 42", "pod-abc", "0.1.0", True, True, 64)}
    assert database.revision() == REVISIONS[-2]
    assert "ledger: created migrator_ledger" in up.stderr


def test_a_failed_revision_leaves_a_failed_row_and_no_applied_row(
    database: Database, project: Path
) -> None:
    broken = revision_file(project, "8d2c5a61e0f4")
    broken.write_text(broken.read_text().replace("UPDATE cars", "UPDATE no_such_table", 1))

    result = run_migrator("upgrade", "head", env=env_for(database, project))

    assert result.status == 1, result.output
    assert rows(database) == [
        ("0d25ea6c8183", "upgrade", "applied"),
        ("4b1e7f3a9c20", "upgrade", "applied"),
        ("8d2c5a61e0f4", "upgrade", "failed"),
    ]
    detail = database.query("SELECT detail FROM migrator_ledger WHERE outcome = 'failed'")
    assert 'relation "no_such_table" does not exist' in detail[0][0]
    assert database.revision() == "4b1e7f3a9c20"


def test_an_applied_revision_whose_code_changed_stops_the_run_and_a_comment_does_not(
    database: Database, project: Path
) -> None:
    env = env_for(database, project, MIGRATOR_DEPLOY_ID="release 1")
    assert run_migrator("upgrade", "4b1e7f3a9c20", env=env).status == 0
    edited = revision_file(project, "0d25ea6c8183")
    original = edited.read_text()
    # Formatting, a comment and the docstring: not an edit.
    reworded = original.replace('"""', '"""Reworded. ', 1).replace("\n\n", "\n\n\n")
    edited.write_text("# a comment\n" + reworded)
    reformatted = run_migrator("upgrade", "8d2c5a61e0f4", env=env)
    assert reformatted.status == 0, reformatted.output

    edited.write_text(original.replace('"cars"', '"automobiles"', 1))
    stopped = run_migrator("upgrade", "head", env=env)

    assert stopped.status == 2, stopped.output
    line = next(line for line in stopped.stderr.splitlines() if "was changed" in line)
    assert "revision 0d25ea6c8183 was changed after it was applied" in line
    assert "by release 1): its checksum was " in line
    assert "nothing ran. Review it, then `migrator accept 0d25ea6c8183`" in line
    assert database.revision() == "8d2c5a61e0f4"

    warned = run_migrator("upgrade", "head", env={**env, "MIGRATOR_ON_CHANGED_REVISION": "warn"})
    assert warned.status == 0, warned.output
    assert "MIGRATOR_ON_CHANGED_REVISION=warn: going on" in warned.stderr
    assert database.revision() == HEAD


def test_a_database_migrated_by_plain_alembic_is_adopted_then_outside_runs_are_named(
    database: Database, project: Path
) -> None:
    alembic_env = database.env
    adopted = run_alembic("upgrade", "4b1e7f3a9c20", cwd=project.parent, env=alembic_env)
    assert adopted.returncode == 0, adopted.stderr

    first = run_migrator("upgrade", "8d2c5a61e0f4", env=env_for(database, project))
    outside = run_alembic("upgrade", "head", cwd=project.parent, env=alembic_env)
    assert outside.returncode == 0, outside.stderr
    at_head = run_migrator("upgrade", "head", env=env_for(database, project))

    assert (first.status, at_head.status) == (0, 0), first.output + at_head.output
    assert first.stderr.count("recorded as adopted") == 1
    assert "ledger: 1 revision(s) applied outside the migrator" in at_head.stderr
    assert rows(database) == [
        ("0d25ea6c8183", "adopt", "adopted"),
        ("4b1e7f3a9c20", "adopt", "adopted"),
        ("8d2c5a61e0f4", "upgrade", "applied"),
        (HEAD, "upgrade", "outside"),
    ]


def test_history_ledger_prints_every_row_in_order(database: Database, project: Path) -> None:
    env = env_for(database, project, MIGRATOR_DEPLOY_ID="release 7")
    assert run_migrator("upgrade", "head", env=env).status == 0

    text = run_migrator("history", "--ledger", env=env)
    as_json = run_migrator("history", "--ledger", "--json", env=env)

    assert text.status == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 5 and lines[0].split()[:3] == ["when", "revision", "direction"]
    assert all("release 7" in line for line in lines[1:])
    assert [line.split()[2] for line in lines[1:]] == REVISIONS
    listed = json.loads(as_json.stdout)
    assert [(row["revision"], row["outcome"]) for row in listed] == [
        (revision, "applied") for revision in REVISIONS
    ]
    # Without --ledger: each applied revision with when, how long and by which deploy.
    plain = run_migrator("history", env=env).stdout.splitlines()
    assert [re.sub(r"\d", "9", line.split("[", 1)[1]) for line in plain] == [
        "applied 9999-99-99 99:99:99Z in 9.999 s by release 9]"
    ] * 4
    entries = json.loads(run_migrator("history", "--json", env=env).stdout)
    assert {entry["ledger"]["deploy"] for entry in entries} == {"release 7"}


def test_accept_records_a_reviewed_edit_and_the_next_run_goes_on(
    database: Database, project: Path
) -> None:
    env = env_for(database, project, MIGRATOR_DEPLOY_ID="release 2")
    assert run_migrator("upgrade", "8d2c5a61e0f4", env=env).status == 0
    edited = revision_file(project, "8d2c5a61e0f4")
    edited.write_text(edited.read_text().replace("fuel_type = 'electric'", "fuel_type = 'ev'", 1))
    assert run_migrator("upgrade", "head", env=env).status == 2

    accepted = run_migrator("accept", "8d2c5a61e0f4", env=env)
    again = run_migrator("accept", "8d2c5a61e0f4", env=env)
    upgraded = run_migrator("upgrade", "head", env=env)

    assert (accepted.status, again.status, upgraded.status) == (0, 0, 0), upgraded.output
    assert "recorded as reviewed" in accepted.stderr
    assert "nothing to do" in again.stderr
    assert rows(database)[-2:] == [
        ("8d2c5a61e0f4", "accept", "accepted"),
        (HEAD, "upgrade", "applied"),
    ]
    assert database.revision() == HEAD


def test_stamp_if_matches_adopts_a_database_whose_schema_matches_and_refuses_one_that_differs(
    database: Database, project: Path, tmp_path: Path
) -> None:
    env = env_for(database, project, MIGRATOR_DEPLOY_ID="baseline")
    # An existing production database: its schema made without the migrator, no version
    # table; one index missing.
    made = run_alembic("upgrade", "head", cwd=project.parent, env=database.env)
    assert made.returncode == 0, made.stderr
    database.query("DROP TABLE alembic_version")
    database.query("DROP INDEX ix_cars_model")

    refused = run_migrator("stamp", "head", "--if-matches", env=env)

    assert refused.status == 5, refused.output
    assert "the database's schema differs from the models, nothing stamped" in refused.stderr
    assert database.revision() is None
    assert not [row for row in rows(database) if row[1] == "stamp"]

    database.query("CREATE UNIQUE INDEX ix_cars_model ON cars (model)")
    stamped = run_migrator("stamp", "head", "--if-matches", env=env)

    assert stamped.status == 0, stamped.output
    assert database.revision() == HEAD
    assert rows(database) == [(revision, "stamp", "stamped") for revision in REVISIONS]
    assert run_migrator("upgrade", "head", env=env).status == 0  # nothing to do, nothing changed


def test_a_role_that_cannot_create_the_ledger_gets_exit_6_before_anything_runs(
    database: Database, project: Path, other_role: OtherRole
) -> None:
    # Migrated by the owner with plain Alembic; the deploy role may change rows, not create.
    assert (
        run_alembic("upgrade", "4b1e7f3a9c20", cwd=project.parent, env=database.env).returncode == 0
    )
    with superuser_engine(database.server, database.name).connect() as connection:
        connection.execute(sa.text(f"REVOKE CREATE ON SCHEMA public FROM {other_role.name}"))
        connection.execute(
            sa.text(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
                f"TO {other_role.name}"
            )
        )
    env = {**database.env_with(user=other_role.name), "MIGRATOR_CONFIG": str(project)}

    result = run_migrator("upgrade", "head", env=env)

    assert result.status == 6, result.output
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1
    assert (
        "cannot create the deploy ledger migrator_ledger: permission denied for schema public"
        in errors[0]
    )
    assert "grant the role CREATE on the version table's schema" in errors[0]
    assert database.revision() == "4b1e7f3a9c20"
    assert "migrator_ledger" not in database.tables()


def test_the_no_op_fast_path_defers_to_the_ledger_when_an_applied_revision_changed(
    database: Database, project: Path
) -> None:
    env = env_for(database, project, MIGRATOR_LOG_LEVEL="DEBUG")
    assert run_migrator("manifest", env=env).status == 0
    assert run_migrator("upgrade", "head", env=env).status == 0
    answered = run_migrator("upgrade", "head", env=env)
    assert "answered by the manifest" in answered.stderr  # the ledger agrees: fast

    edited = revision_file(project, HEAD)
    edited.write_text(edited.read_text().replace('"services"', '"repairs"', 1))
    assert run_migrator("manifest", env=env).status == 0  # the image build writes it anew
    stopped = run_migrator("upgrade", "head", env=env)

    assert stopped.status == 2, stopped.output
    assert "fast path: the deploy ledger has c3f9b7d21a58 applied, or another checksum" in (
        stopped.stderr
    )
    assert f"revision {HEAD} was changed after it was applied" in stopped.stderr


def documented_row() -> dict[str, object]:
    """The summary's ledger row as docs/ledger.md shows it."""
    block = (ROOT / "docs" / "ledger.md").read_text().split("```json\n", 1)[1].split("```")[0]
    row = json.loads(block)
    assert isinstance(row, dict)
    return row


def test_the_summary_file_carries_the_ledgers_newest_row_on_every_path(
    database: Database, project: Path, tmp_path: Path
) -> None:
    """What a fleet's report and the action's job summary show of a target (both read the
    summary file): after a failure, the failed row; after a deploy, its last revision's row;
    on a later no-op, full path or fast, that same row, with the deploy that wrote it."""
    summary_file = tmp_path / "summary.json"
    env = env_for(database, project, MIGRATOR_SUMMARY_FILE=str(summary_file))
    broken = revision_file(project, HEAD)
    original = broken.read_text()
    broken.write_text(original.replace('"cars.id"', '"no_such_table.id"', 1))

    def newest_row() -> dict[str, object]:
        row = json.loads(summary_file.read_text())["ledger"]
        assert isinstance(row, dict)
        return row

    failed = run_migrator("upgrade", "head", env={**env, "MIGRATOR_DEPLOY_ID": "release 1"})
    assert failed.status == 1, failed.output
    row = newest_row()
    assert (row["revision"], row["outcome"], row["deploy"]) == (HEAD, "failed", "release 1")
    assert "no_such_table" in str(row["detail"])

    broken.write_text(original)
    deployed = run_migrator("upgrade", "head", env={**env, "MIGRATOR_DEPLOY_ID": "release 2"})
    assert deployed.status == 0, deployed.output
    applied = newest_row()
    assert (applied["revision"], applied["direction"], applied["outcome"]) == (
        HEAD,
        "upgrade",
        "applied",
    )
    assert (applied["deploy"], applied["detail"]) == ("release 2", None)
    assert applied.keys() == documented_row().keys()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", str(applied["finished_at"]))
    newest = database.query("SELECT round(seconds::numeric, 3) FROM migrator_ledger ORDER BY id")[
        -1
    ][0]
    assert applied["seconds"] == float(newest)

    later = {**env, "MIGRATOR_DEPLOY_ID": "release 3", "MIGRATOR_LOG_LEVEL": "DEBUG"}
    full_path = run_migrator("upgrade", "head", env=later)
    assert full_path.status == 0 and "answered by the manifest" not in full_path.stderr
    assert newest_row() == applied
    assert run_migrator("manifest", env=later).status == 0
    fast_path = run_migrator("upgrade", "head", env=later)
    assert "answered by the manifest" in fast_path.stderr, fast_path.output
    assert newest_row() == applied


# The example's revisions as every Python hashes them: the ledger of a database deployed by
# an image on one Python is read by a run on another (a laptop, the next image).
CHECKSUMS = {
    "0d25ea6c8183": "d4a7802a968316d47323fa9608dc72a7f8876b207f70a4a58eebade3be2876df",
    "4b1e7f3a9c20": "92deb2ed4967fcfcc9eaf7ad174b44a4b3c870d446f70c3cd60b509785246420",
    "8d2c5a61e0f4": "bd231aa0cb8bbba4582eb5a258c3a259dafccc4e4f7a4d1716bb66387d10c5f5",
    "c3f9b7d21a58": "262cfdd25e87705e3aa59994fa2d00b3755d52c4bcead810d09d9702e16ac27f",
}


def test_a_revisions_checksum_is_the_same_on_every_python(project: Path) -> None:
    """Not ast.dump's text, which changes between Pythons (3.12 added type_params, 3.13
    leaves out empty fields): CI runs this on another Python than the test machine's."""
    assert {
        revision: revision_checksum(revision_file(project, revision)) for revision in REVISIONS
    } == CHECKSUMS
