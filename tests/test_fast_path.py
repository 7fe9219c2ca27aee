"""The no-op fast path: with a manifest, `upgrade head` on a database at head is answered with
psycopg2 alone, with the lines the full path logs; on every kind of doubt the full path runs,
and says what it always says.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from conditions import Bouncer
from conftest import PROJECTS, Database, Result, run_migrator

# The core: each test on psycopg 3 and on psycopg2.
pytestmark = pytest.mark.both_drivers

ANSWERED = "answered by the manifest (SQLAlchemy imported: False)"
DECLINED = "taking the full path"
HEAD, MIDDLE = "a3a3a3a3a3a3", "a2a2a2a2a2a2"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the audited test project with its manifest, as an image build leaves it."""
    copy = tmp_path / "project"
    shutil.copytree(PROJECTS / "audited", copy)
    ini = copy / "alembic.ini"
    written = run_migrator("manifest", env={"MIGRATOR_CONFIG": str(ini)})
    assert written.status == 0, written.output
    assert (copy / "migrator-manifest.json").is_file()
    return ini


def upgrade(database: Database, ini: Path, *arguments: str, **env: str) -> Result:
    settings = {**database.env, "MIGRATOR_CONFIG": str(ini), "MIGRATOR_LOG_LEVEL": "DEBUG"}
    return run_migrator(*(arguments or ("upgrade", "head")), env={**settings, **env})


def events(result: Result) -> list[str]:
    """The INFO lines, without times and durations: what a reader of the log sees happen."""
    lines = [
        line.split(" INFO    ", 1)[1] for line in result.stderr.splitlines() if " INFO " in line
    ]
    return [re.sub(r"\d+\.\d+", "N", line) for line in lines]


def test_a_no_op_deploy_is_answered_from_the_manifest_as_the_full_path_would(
    database: Database, project: Path
) -> None:
    assert upgrade(database, project).status == 0  # base to head: the full path
    fast = upgrade(database, project)
    fast_info = upgrade(database, project, MIGRATOR_LOG_LEVEL="INFO")
    (project.parent / "migrator-manifest.json").unlink()
    full = upgrade(database, project)
    full_info = upgrade(database, project, MIGRATOR_LOG_LEVEL="INFO")

    assert fast.status == full.status == 0, fast.output
    assert ANSWERED in fast.stderr
    assert DECLINED in full.stderr and "no usable manifest" in full.stderr
    assert events(fast_info) == events(full_info)
    assert f"nothing to do: the database is at {HEAD}" in fast.stderr


def change_a_revision(ini: Path) -> None:
    revision = ini.parent / "alembic" / "versions" / "a3_maybe_failing.py"
    revision.write_text(revision.read_text() + "\n# edited after the manifest\n")


def add_a_revision(ini: Path) -> None:
    (ini.parent / "alembic" / "versions" / "a4_added.py").write_text(
        '"""added after the manifest"""\n\nfrom alembic import op\n\n'
        'revision = "a4a4a4a4a4a4"\ndown_revision = "a3a3a3a3a3a3"\n\n\n'
        "def upgrade() -> None:\n    op.execute(\"INSERT INTO applied VALUES ('a4a4a4a4a4a4')\")\n"
    )


def from_another_release(ini: Path) -> None:
    path = ini.parent / "migrator-manifest.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "migrator": "0.0.1"}))


@pytest.mark.parametrize(
    ("doubt", "edit", "arguments", "env", "status", "said"),
    [
        ("a revision changed", change_a_revision, (), {}, 0, "nothing to do"),
        ("a revision added", add_a_revision, (), {}, 0, "[1/1] a4a4a4a4a4a4"),
        ("another release's manifest", from_another_release, (), {}, 0, "nothing to do"),
        ("a target that is not head", None, ("upgrade", MIDDLE), {}, 0, "nothing to do"),
        ("a bad setting", None, (), {"MIGRATOR_LOCK_TIMEOUT": "forever"}, 2, "not a number"),
        (
            "a timeout checked on the session",
            None,
            (),
            {"MIGRATOR_STATEMENT_TIMEOUT": "5"},
            0,
            "nothing to do",
        ),
    ],
)
def test_each_doubt_about_the_project_or_the_request_takes_the_full_path(
    database: Database,
    project: Path,
    doubt: str,
    edit: Callable[[Path], None] | None,
    arguments: tuple[str, ...],
    env: dict[str, str],
    status: int,
    said: str,
) -> None:
    assert upgrade(database, project).status == 0
    if edit is not None:
        edit(project)
    result = upgrade(database, project, *arguments, **env)

    assert result.status == status, result.output
    assert said in result.stderr
    assert ANSWERED not in result.stderr
    if status == 0:
        assert DECLINED in result.stderr


def test_a_database_behind_head_is_migrated_by_the_full_path(
    database: Database, project: Path
) -> None:
    assert upgrade(database, project, "upgrade", MIDDLE).status == 0
    result = upgrade(database, project)

    assert result.status == 0, result.output
    assert "the database is at a2a2a2a2a2a2; taking the full path" in result.stderr
    assert "[1/1] a3a3a3a3a3a3" in result.stderr


def test_a_database_at_a_revision_the_project_does_not_know_takes_the_full_path(
    database: Database, project: Path
) -> None:
    assert upgrade(database, project).status == 0
    database.query("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    result = upgrade(database, project)

    assert result.status == 2, result.output
    assert f"fast path: the database is at ffffffffffff; {DECLINED}" in result.stderr
    assert ANSWERED not in result.stderr
    assert "a revision this project does not know" in result.stderr


def test_a_read_only_database_takes_the_full_path(database: Database, project: Path) -> None:
    assert upgrade(database, project).status == 0
    with database.server.admin.connect() as connection:
        connection.execute(
            sa.text(f"ALTER DATABASE {database.name} SET default_transaction_read_only = on")
        )
    result = upgrade(database, project, MIGRATOR_WAIT_TIMEOUT="1")

    assert result.status == 3, result.output
    assert f"fast path: a pooler, or a read-only server; {DECLINED}" in result.stderr
    assert ANSWERED not in result.stderr
    assert "read-only" in result.stderr


def test_a_transaction_pooler_takes_the_full_path(
    database: Database, project: Path, pgbouncer: Callable[..., Bouncer]
) -> None:
    assert upgrade(database, project).status == 0
    bouncer = pgbouncer(database, mode="transaction", pool_size=5)
    result = run_migrator(
        "upgrade",
        "head",
        env={**bouncer.env, "MIGRATOR_CONFIG": str(project), "MIGRATOR_LOG_LEVEL": "DEBUG"},
    )

    assert result.status == 2, result.output
    assert "transaction pooler" in result.stderr
