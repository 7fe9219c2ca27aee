"""Other Alembic projects, URLs and secrets: what a team brings, the migrator takes unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from conftest import PASSWORD, PROJECTS, ROLE, Database, run_alembic, run_migrator

WIDGETS_REVISION = """
def upgrade() -> None:
    op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))


def downgrade() -> None:
    op.drop_table("widgets")
"""


def alembic_init_project(directory: Path) -> Path:
    """A project exactly as `alembic init` writes it, plus one revision a developer wrote."""

    for args in (("init", "migrations"), ("revision", "-m", "create widgets", "--rev-id", "w1")):
        run_alembic(*args, cwd=directory).check_returncode()
    (revision,) = (directory / "migrations" / "versions").glob("w1_*.py")
    text = revision.read_text()
    body_start = text.index("def upgrade()")
    revision.write_text(text[:body_start] + WIDGETS_REVISION.lstrip())
    return directory / "alembic.ini"


def test_an_unchanged_alembic_init_project_upgrades_and_downgrades(
    database: Database, tmp_path: Path
) -> None:
    ini = alembic_init_project(tmp_path)
    env = {"DATABASE_URL": database.url, "MIGRATOR_CONFIG": str(ini)}

    upgraded = run_migrator("upgrade", "head", env=env)
    tables_after_upgrade = database.tables()
    downgraded = run_migrator("downgrade", "base", env=env)
    # env.py's own engine: the ledger is read and written beside it (history reconnects).
    ledger = run_migrator("history", "--ledger", "--json", env=env)

    assert [(row["revision"], row["outcome"]) for row in json.loads(ledger.stdout)] == [
        ("w1", "applied"),
        ("w1", "reverted"),
    ], ledger.output
    assert upgraded.status == 0, upgraded.output
    assert "[1/1] w1 (create widgets) applied" in upgraded.stderr
    assert tables_after_upgrade == {"alembic_version", "migrator_ledger", "widgets"}
    assert downgraded.status == 0, downgraded.output
    assert database.tables() == {"alembic_version", "migrator_ledger"}
    # env.py's fileConfig() did not take over the log: our format throughout.
    assert all(line[:4].isdigit() for line in upgraded.stderr.splitlines())
    assert "driver://user:pass@localhost/dbname" in ini.read_text()  # the ini was not written


def test_two_heads_name_them_or_take_both(database: Database) -> None:
    env = {**database.env, "MIGRATOR_CONFIG": str(PROJECTS / "two_heads" / "alembic.ini")}

    ambiguous = run_migrator("upgrade", "head", env=env)
    one = run_migrator("upgrade", "bbb111", env=env)
    both = run_migrator("upgrade", "heads", env=env)

    assert ambiguous.status == 2
    assert "the migrations have 2 heads (bbb111, bbb222)" in ambiguous.stderr
    assert one.status == 0 and both.status == 0, both.output
    assert database.revision() == "bbb111,bbb222"
    assert database.tables() >= {"t_aaa111", "t_bbb111", "t_bbb222"}


def test_postgresql_and_postgres_urls_run_on_sqlalchemys_default_driver(
    database: Database,
) -> None:
    """SQLAlchemy 2.1 runs postgresql:// on psycopg 3; the line says so. An explicit driver
    is kept."""
    postgres_url = database.url.replace("postgresql://", "postgres://")

    first = run_migrator("upgrade", "4b1e7f3a9c20", env={"DATABASE_URL": database.url})
    second = run_migrator("upgrade", "head", env={"DATABASE_URL": postgres_url})
    explicit = run_migrator("current", env={"DATABASE_URL": database.psycopg2_url})

    assert sa.__version__.startswith("2.1"), "the venv's SQLAlchemy decides the default"
    assert first.status == 0, first.output
    assert second.status == 0, second.output
    assert explicit.status == 0, explicit.output
    assert "connecting to postgresql+psycopg://app_owner:***@" in first.stderr
    assert "connecting to postgresql+psycopg://app_owner:***@" in second.stderr
    assert "connecting to postgresql+psycopg2://app_owner:***@" in explicit.stderr
    assert database.revision() == "c3f9b7d21a58"


def test_a_driver_the_migrator_does_not_run_on_is_refused(database: Database) -> None:
    url = database.url.replace("postgresql://", "postgresql+asyncpg://")

    result = run_migrator("upgrade", "head", env={"DATABASE_URL": url})

    assert result.status == 2, result.output
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "DATABASE_URL: driver 'asyncpg' is not one the migrator runs on "
            "(postgresql+psycopg:// or postgresql+psycopg2://)"
        )
    )
    assert database.revision() is None


def test_secrets_from_files(database: Database, tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")  # as `echo` writes it
    url_file = tmp_path / "url"
    url_file.write_text(database.url)
    parts = {**database.env, "DB_PASSWORD": "", "DB_PASSWORD_FILE": str(password_file)}

    by_password_file = run_migrator("upgrade", "4b1e7f3a9c20", env=parts)
    by_url_file = run_migrator("upgrade", "head", env={"DATABASE_URL_FILE": str(url_file)})

    assert by_password_file.status == 0, by_password_file.output
    assert by_url_file.status == 0, by_url_file.output
    assert database.revision() == "c3f9b7d21a58"


def test_the_password_works_in_every_form(database: Database) -> None:
    """p@ss%w:rd/#? through DB_* parts and through an encoded URL, and never printed."""
    by_parts = run_migrator("current", "--json", env=database.env)
    by_url = run_migrator("current", "--json", env={"DATABASE_URL": database.url})

    assert by_parts.status == 0 and by_url.status == 0
    assert ROLE in by_parts.stderr  # the user is shown, the password is not


def test_verify_and_check_on_an_unchanged_alembic_init_project(
    database: Database, tmp_path: Path
) -> None:
    """Its env.py builds its own engine and names no models: the stairway still runs."""
    ini = alembic_init_project(tmp_path)
    env = {"DATABASE_URL": database.url, "MIGRATOR_CONFIG": str(ini)}

    verified = run_migrator("verify", env=env)
    run_migrator("upgrade", "head", env=env)
    checked = run_migrator("check", env=env)

    assert verified.status == 0, verified.output
    assert "verified: 1 revision(s) up, down and up again; no models to compare" in (
        verified.stdout
    )
    assert checked.status == 0, checked.output
    assert checked.stdout.strip() == "w1 (head); no models to compare"
