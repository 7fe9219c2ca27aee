"""`verify` and `check` against a real PostgreSQL, on the example tree and on broken ones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import (
    PROJECTS,
    ROOT,
    Database,
    Server,
    finish,
    run_migrator,
    start_migrator,
    wait_for_line,
)

# The core: each test on psycopg 3 and on psycopg2.
pytestmark = pytest.mark.both_drivers

# Each broken tree: (revisions as (id, upgrade SQL, downgrade SQL), model columns, what the
# report must name). Revision "r1" creates table t; the next ones are the story.
BASE = (
    "r1",
    "CREATE TABLE t (id int PRIMARY KEY, code text CONSTRAINT uq_t_code UNIQUE, colour text)",
    "DROP TABLE t",
)
TREES: dict[str, tuple[list[tuple[str, str, str]], str, str]] = {
    "downgrade leaves an index": (
        [BASE, ("r2", "CREATE INDEX ix_t_colour ON t (colour)", "SELECT 1")],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: index ix_t_colour on t left behind",
    ),
    "downgrade leaves a column": (
        [BASE, ("r2", "ALTER TABLE t ADD COLUMN size int", "SELECT 1")],
        "size = sa.Column(sa.Integer)",
        "r2 (r2): the downgrade does not undo the upgrade: column t.size left behind",
    ),
    "downgrade drops the wrong constraint": (
        [
            BASE,
            (
                "r2",
                "ALTER TABLE t ADD CONSTRAINT uq_t_colour UNIQUE (colour)",
                "ALTER TABLE t DROP CONSTRAINT uq_t_code",
            ),
        ],
        "",
        "unique constraint uq_t_code on t missing (it was there before the upgrade)",
    ),
    "downgrade leaves a schema": (
        [BASE, ("r2", "CREATE SCHEMA extra", "SELECT 1")],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: schema extra left behind",
    ),
    "downgrade leaves a function and its trigger": (
        [
            BASE,
            (
                "r2",
                "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS "
                "'BEGIN RETURN NEW; END'; "
                "CREATE TRIGGER t_touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch()",
                "SELECT 1",
            ),
        ],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: function touch() left behind; "
        "trigger t_touch on t left behind",
    ),
    "downgrade leaves comments": (
        [
            BASE,
            (
                "r2",
                "COMMENT ON TABLE t IS 'cars'; COMMENT ON COLUMN t.colour IS 'paint'",
                "SELECT 1",
            ),
        ],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: comment on column t.colour left "
        "behind; comment on table t left behind",
    ),
    "downgrade leaves a grant": (
        [BASE, ("r2", "GRANT SELECT, UPDATE ON t TO PUBLIC", "REVOKE UPDATE ON t FROM PUBLIC")],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: grant on t to PUBLIC left behind",
    ),
    "downgrade leaves an extension": (
        [BASE, ("r2", "CREATE EXTENSION citext", "SELECT 1")],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: extension citext left behind",
    ),
    "downgrade leaves row-level security and a policy": (
        [
            BASE,
            (
                "r2",
                "ALTER TABLE t ENABLE ROW LEVEL SECURITY; "
                "CREATE POLICY not_red ON t USING (colour <> 'red')",
                "SELECT 1",
            ),
        ],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: policy not_red on t left behind; "
        "row level security on t left behind",
    ),
    "downgrade leaves a table unlogged": (
        [BASE, ("r2", "ALTER TABLE t SET UNLOGGED", "SELECT 1")],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: table t changed: was logged, "
        "now unlogged",
    ),
    "downgrade leaves a storage parameter": (
        [BASE, ("r2", "ALTER TABLE t SET (fillfactor = 70)", "SELECT 1")],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: storage parameter fillfactor on t "
        "left behind",
    ),
    "downgrade leaves a sequence's increment": (
        [
            BASE,
            ("r2", "CREATE SEQUENCE s", "DROP SEQUENCE s"),
            ("r3", "ALTER SEQUENCE s INCREMENT BY 10", "SELECT 1"),
        ],
        "",
        "r3 (r3): the downgrade does not undo the upgrade: sequence s changed: "
        "was bigint, increment 1, minimum 1, maximum 9223372036854775807, start 1, cache 1, "
        "now bigint, increment 10,",
    ),
    "downgrade leaves an index partial": (
        [
            BASE,
            ("r2", "CREATE INDEX ix_t_colour ON t (colour)", "DROP INDEX ix_t_colour"),
            (
                "r3",
                "DROP INDEX ix_t_colour; "
                "CREATE INDEX ix_t_colour ON t (colour) WHERE colour <> 'red'",
                "SELECT 1",
            ),
        ],
        "",
        "r3 (r3): the downgrade does not undo the upgrade: index ix_t_colour on t changed: "
        "was CREATE INDEX ix_t_colour ON public.t USING btree (colour), "
        "now CREATE INDEX ix_t_colour ON public.t USING btree (colour) "
        "WHERE (colour <> 'red'::text)",
    ),
    "downgrade leaves an index descending": (
        [
            BASE,
            ("r2", "CREATE INDEX ix_t_colour ON t (colour)", "DROP INDEX ix_t_colour"),
            (
                "r3",
                "DROP INDEX ix_t_colour; CREATE INDEX ix_t_colour ON t (colour DESC)",
                "SELECT 1",
            ),
        ],
        "",
        "now CREATE INDEX ix_t_colour ON public.t USING btree (colour DESC)",
    ),
    "downgrade leaves a hash index": (
        [
            BASE,
            ("r2", "CREATE INDEX ix_t_colour ON t (colour)", "DROP INDEX ix_t_colour"),
            (
                "r3",
                "DROP INDEX ix_t_colour; CREATE INDEX ix_t_colour ON t USING hash (colour)",
                "SELECT 1",
            ),
        ],
        "",
        "now CREATE INDEX ix_t_colour ON public.t USING hash (colour)",
    ),
    "downgrade leaves a materialized view": (
        [BASE, ("r2", "CREATE MATERIALIZED VIEW mv AS SELECT id FROM t", "SELECT 1")],
        "",
        "r2 (r2): the downgrade does not undo the upgrade: materialized view mv left behind",
    ),
    "downgrade raises": (
        [BASE, ("r2", "ALTER TABLE t ADD COLUMN size int", "ALTER TABLE t DROP COLUMN sise")],
        "size = sa.Column(sa.Integer)",
        'r2 (r2): downgrade raised column "sise" of relation "t" does not exist',
    ),
    "model column without a migration": (
        [BASE],
        "size = sa.Column(sa.Integer)",
        "models: column t.size is in the models but not in the database",
    ),
}

# Every kind of object the snapshot reads, made and then unmade exactly: no false report.
EVERY_KIND = (
    "COMMENT ON TABLE t IS 'cars'; COMMENT ON COLUMN t.colour IS 'paint'; "
    "GRANT SELECT ON t TO PUBLIC; CREATE EXTENSION citext; "
    "ALTER TABLE t ENABLE ROW LEVEL SECURITY; "
    "CREATE POLICY not_red ON t USING (colour <> 'red'); "
    "ALTER TABLE t SET UNLOGGED; ALTER TABLE t SET (fillfactor = 70); "
    "CREATE SEQUENCE s INCREMENT BY 10; "
    "CREATE INDEX ix_t_partial ON t (colour) WHERE colour <> 'red'; "
    "CREATE INDEX ix_t_desc ON t (colour DESC); CREATE INDEX ix_t_hash ON t USING hash (code); "
    "CREATE SCHEMA extra; CREATE FUNCTION extra.one() RETURNS int LANGUAGE sql AS 'SELECT 1'; "
    "CREATE MATERIALIZED VIEW mv AS SELECT id FROM t; CREATE VIEW v AS SELECT id FROM t; "
    "CREATE TYPE mood AS ENUM ('sad', 'happy')"
)
NO_KIND = (
    "DROP TYPE mood; DROP VIEW v; DROP MATERIALIZED VIEW mv; DROP SCHEMA extra CASCADE; "
    "DROP INDEX ix_t_hash; DROP INDEX ix_t_desc; DROP INDEX ix_t_partial; DROP SEQUENCE s; "
    "ALTER TABLE t RESET (fillfactor); ALTER TABLE t SET LOGGED; DROP POLICY not_red ON t; "
    "ALTER TABLE t DISABLE ROW LEVEL SECURITY; DROP EXTENSION citext; "
    "REVOKE SELECT ON t FROM PUBLIC; COMMENT ON COLUMN t.colour IS NULL; "
    "COMMENT ON TABLE t IS NULL"
)

MODELS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class T(Base):
    __tablename__ = "t"
    id = sa.Column(sa.Integer, primary_key=True)
    code = sa.Column(sa.Text, unique=True)
    colour = sa.Column(sa.Text)
    {extra}
"""


def make_tree(directory: Path, revisions: list[tuple[str, str, str]], extra_column: str) -> Path:
    """A small Alembic project: models.py, env.py through the migrator's helper, revisions."""
    versions = directory / "alembic" / "versions"
    versions.mkdir(parents=True)
    (directory / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/alembic\nprepend_sys_path = .\n"
        "path_separator = os\nsqlalchemy.url =\n"
    )
    (directory / "models.py").write_text(MODELS.format(extra=extra_column))
    (directory / "alembic" / "env.py").write_text(
        "from migrator.alembic_env import run_migrations\nfrom models import Base\n\n"
        "run_migrations(Base.metadata, compare_server_default=False)\n"
    )
    down = None
    for revision, upgrade, downgrade in revisions:
        (versions / f"{revision}.py").write_text(
            textwrap.dedent(f'''\
            """{revision}"""
            from alembic import op

            revision = {revision!r}
            down_revision = {down!r}


            def upgrade():
                op.execute({upgrade!r})


            def downgrade():
                op.execute({downgrade!r})
            ''')
        )
        down = revision
    return directory / "alembic.ini"


def scratch_databases(server: Server) -> list[str]:
    with server.admin.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname LIKE 'migrator_scratch_%'")
        )
        return [row[0] for row in rows]


def test_the_example_tree_verifies_clean(server: Server, database: Database) -> None:
    result = run_migrator("verify", "--json", env=database.env)

    report = json.loads(result.stdout)
    assert result.status == 0, result.output
    assert report["ok"] is True and report["problems"] == [] and report["models"] == []
    assert [stair["revision"] for stair in report["stairs"]] == [
        "0d25ea6c8183",
        "4b1e7f3a9c20",
        "8d2c5a61e0f4",
        "c3f9b7d21a58",
    ]
    assert "[2/4] 4b1e7f3a9c20 upgrade ✓ downgrade ✓" in result.stderr
    assert scratch_databases(server) == []
    assert database.tables() == set()  # the configured database itself is untouched


def test_a_tree_that_makes_and_unmakes_every_kind_of_object_verifies_clean(
    server: Server, database: Database, tmp_path: Path
) -> None:
    revisions = [BASE, ("r2", EVERY_KIND, NO_KIND), ("r3", NO_KIND, EVERY_KIND)]
    ini = make_tree(tmp_path, revisions, "")

    result = run_migrator("verify", env={**database.env, "MIGRATOR_CONFIG": str(ini)})

    assert result.status == 0, result.output
    assert "verified: 3 revision(s) up, down and up again; models match" in result.stdout


@pytest.mark.parametrize("case", list(TREES))
def test_a_broken_tree_fails_naming_the_revision_and_object(
    case: str, server: Server, database: Database, tmp_path: Path
) -> None:
    revisions, extra_column, named = TREES[case]
    ini = make_tree(tmp_path, revisions, extra_column)

    result = run_migrator("verify", env={**database.env, "MIGRATOR_CONFIG": str(ini)})

    assert result.status == 5, result.output
    assert named in result.stdout
    assert "status=difference" in result.stderr
    assert scratch_databases(server) == []


def test_two_heads_fail_verify_unless_named(server: Server, database: Database) -> None:
    env = {**database.env, "MIGRATOR_CONFIG": str(PROJECTS / "two_heads" / "alembic.ini")}

    unnamed = run_migrator("verify", env=env)
    named = run_migrator("verify", "heads", env=env)

    assert unnamed.status == 5
    assert "the migrations have 2 heads (bbb111, bbb222)" in unnamed.stdout
    assert named.status == 0, named.output


def test_verify_in_a_database_given_by_url(server: Server, database: Database) -> None:
    # Only the verify database is configured: one that DATABASE_URL or DB_* also names is
    # the database being migrated, and refused (tests/test_isolation.py).
    result = run_migrator("verify", env={"MIGRATOR_VERIFY_URL": database.url})

    again = run_migrator("verify", env={"MIGRATOR_VERIFY_URL": database.url})

    assert result.status == 0, result.output
    assert "scratch database" not in result.stderr
    assert database.revision() == "c3f9b7d21a58"  # the stairway ends at head
    # A second run would climb from head: refused, not a stairway of wrong steps.
    assert again.status == 2, again.output
    assert "the verify database is at c3f9b7d21a58, not base" in again.stderr


def test_the_scratch_database_is_dropped_after_sigterm(server: Server, database: Database) -> None:
    env = {
        **database.env,
        "MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini"),
        "SAMPLE_SLEEP": "60",
    }
    process = start_migrator("verify", env=env)
    wait_for_line(process, "[1/3] a1a1a1a1a1a1")
    assert len(scratch_databases(server)) == 1
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    result = finish(process, sent, timeout=30)

    assert result.status == 143, result.output
    assert result.seconds < 5
    assert "dropped" in result.stderr
    assert scratch_databases(server) == []


def test_check_passes_only_at_head_with_matching_models(database: Database) -> None:
    behind = run_migrator("check", env=database.env)
    tables_after_check = database.tables()
    run_migrator("upgrade", "head", env=database.env)
    at_head = run_migrator("check", "--json", env=database.env)

    assert behind.status == 5
    assert "the database is at base, not head: 4 revision(s) to apply" in behind.stdout
    assert tables_after_check == set()  # check changed nothing, not even alembic_version
    assert at_head.status == 0, at_head.output
    assert json.loads(at_head.stdout)["ok"] is True


def test_check_names_models_that_differ(database: Database, tmp_path: Path) -> None:
    ini = make_tree(tmp_path, [BASE], "size = sa.Column(sa.Integer)")
    env = {**database.env, "MIGRATOR_CONFIG": str(ini)}
    run_migrator("upgrade", "head", env=env)

    result = run_migrator("check", env=env)

    assert result.status == 5
    assert "models: column t.size is in the models but not in the database" in result.stdout
    assert database.revision() == "r1"


def test_check_names_a_server_default_and_enum_labels_that_differ(
    database: Database, tmp_path: Path
) -> None:
    # env.py says compare_server_default=False (make_tree): check compares them anyway.
    made = (
        "r1",
        "CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TYPE size AS ENUM ('S', 'M'); "
        "CREATE TABLE t (id int PRIMARY KEY, code text CONSTRAINT uq_t_code UNIQUE, "
        "colour text DEFAULT 'red', mood mood, size size)",
        "DROP TABLE t; DROP TYPE mood; DROP TYPE size",
    )
    models = (
        "colour = sa.Column(sa.Text, server_default='blue')\n"
        "    mood = sa.Column(sa.Enum('sad', 'happy', 'calm', name='mood'))\n"
        "    size = sa.Column(sa.Enum('S', 'M', name='size'))"
    )
    ini = make_tree(tmp_path, [made], models)
    env = {**database.env, "MIGRATOR_CONFIG": str(ini)}
    run_migrator("upgrade", "head", env=env)

    result = run_migrator("check", env=env)

    assert result.status == 5
    assert (
        "models: column t.colour server default: 'red'::text in the database, blue in the models"
        in result.stdout
    )
    assert (
        "models: enum type mood labels: sad, happy in the database, sad, happy, calm in the models"
        in result.stdout
    )
    assert "enum type size" not in result.stdout  # the same labels


PYTEST_ALEMBIC_CONFTEST = """
import pytest
import sqlalchemy as sa

@pytest.fixture
def alembic_config():
    return {{"file": {ini!r}}}

@pytest.fixture
def alembic_engine():
    return sa.create_engine({url!r})
"""


def pytest_alembic_verdicts(ini: Path, database: Database, directory: Path) -> dict[str, bool]:
    """pytest-alembic's four built-in tests on the same tree: name -> passed."""
    directory.mkdir()
    (directory / "pytest.ini").write_text("[pytest]\n")  # its own run, not this project's
    (directory / "conftest.py").write_text(
        PYTEST_ALEMBIC_CONFTEST.format(ini=str(ini), url=database.psycopg2_url)
    )
    (directory / "test_builtin.py").write_text(
        "from pytest_alembic.tests import (test_model_definitions_match_ddl,\n"
        "    test_single_head_revision, test_up_down_consistency, test_upgrade)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", str(directory)],
        cwd=ini.parent,
        capture_output=True,
        text=True,
    )
    verdicts = {}
    for line in result.stdout.splitlines():
        for word, passed in (("PASSED", True), ("FAILED", False), ("ERROR", False)):
            if line.startswith(word) and "::" in line:
                verdicts[line.split("::")[1].split()[0]] = passed
    assert len(verdicts) == 4, result.stdout + result.stderr
    return verdicts


@pytest.mark.parametrize(
    ("case", "failing_builtin"),
    [
        ("downgrade raises", "test_up_down_consistency"),
        ("model column without a migration", "test_model_definitions_match_ddl"),
    ],
)
def test_pytest_alembic_agrees_where_it_overlaps(
    case: str, failing_builtin: str, database: Database, tmp_path: Path
) -> None:
    revisions, extra_column, _ = TREES[case]
    ini = make_tree(tmp_path / "tree", revisions, extra_column)

    ours = run_migrator("verify", env={**database.env, "MIGRATOR_CONFIG": str(ini)})
    theirs = pytest_alembic_verdicts(ini, database, tmp_path / "cross")

    assert ours.status == 5
    assert theirs[failing_builtin] is False
    assert theirs["test_single_head_revision"] is True


def test_pytest_alembic_agrees_on_the_example_and_on_two_heads(
    database: Database, tmp_path: Path
) -> None:
    example = pytest_alembic_verdicts(ROOT / "alembic.ini", database, tmp_path / "example")
    two_heads = pytest_alembic_verdicts(
        PROJECTS / "two_heads" / "alembic.ini", database, tmp_path / "two_heads"
    )

    assert all(example.values()), example
    assert two_heads["test_single_head_revision"] is False
