"""Bad input: one line naming the problem, exit 2, no traceback, nothing changed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import PROJECTS, ROLE, Database, run_migrator

TWO_HEADS = str(PROJECTS / "two_heads" / "alembic.ini")

# (case, extra environment, arguments, what the one line must name)
CASES: list[tuple[str, dict[str, str], list[str], str]] = [
    (
        "wait timeout not a number",
        {"MIGRATOR_WAIT_TIMEOUT": "abc"},
        ["upgrade"],
        "MIGRATOR_WAIT_TIMEOUT: 'abc' is not a number",
    ),
    (
        "wait timeout negative",
        {"MIGRATOR_WAIT_TIMEOUT": "-1"},
        ["upgrade"],
        "MIGRATOR_WAIT_TIMEOUT",
    ),
    (
        "wait timeout flag",
        {},
        ["--wait-timeout", "soon", "upgrade"],
        "MIGRATOR_WAIT_TIMEOUT (command line): 'soon'",
    ),
    ("lock timeout", {"MIGRATOR_LOCK_TIMEOUT": "forever"}, ["upgrade"], "MIGRATOR_LOCK_TIMEOUT"),
    (
        "connect timeout zero",
        {"MIGRATOR_CONNECT_TIMEOUT": "0"},
        ["upgrade"],
        "MIGRATOR_CONNECT_TIMEOUT",
    ),
    (
        "statement timeout zero",
        {"MIGRATOR_STATEMENT_TIMEOUT": "0"},
        ["upgrade"],
        "MIGRATOR_STATEMENT_TIMEOUT",
    ),
    (
        "ddl lock timeout negative",
        {"MIGRATOR_DDL_LOCK_TIMEOUT": "-5"},
        ["upgrade"],
        "MIGRATOR_DDL_LOCK_TIMEOUT",
    ),
    (
        "ddl lock retries",
        {"MIGRATOR_DDL_LOCK_RETRIES": "many"},
        ["upgrade"],
        "MIGRATOR_DDL_LOCK_RETRIES: 'many'",
    ),
    ("log format", {"MIGRATOR_LOG_FORMAT": "xml"}, ["upgrade"], "MIGRATOR_LOG_FORMAT: 'xml'"),
    ("log level", {"MIGRATOR_LOG_LEVEL": "LOUD"}, ["upgrade"], "MIGRATOR_LOG_LEVEL: 'LOUD'"),
    (
        "allow downgrade",
        {"MIGRATOR_ALLOW_DOWNGRADE": "maybe"},
        ["upgrade"],
        "MIGRATOR_ALLOW_DOWNGRADE: 'maybe' is not true or false",
    ),
    (
        "allow unknown revision",
        {"MIGRATOR_ALLOW_UNKNOWN_REVISION": "2"},
        ["upgrade"],
        "MIGRATOR_ALLOW_UNKNOWN_REVISION",
    ),
    (
        "unknown MIGRATOR_COMMAND",
        {"MIGRATOR_COMMAND": "migrate"},
        [],
        "MIGRATOR_COMMAND: 'migrate' is not one of",
    ),
    (
        "downgrade from env without target",
        {"MIGRATOR_COMMAND": "downgrade"},
        [],
        "MIGRATOR_TARGET: required",
    ),
    (
        "downgrade from env not allowed",
        {"MIGRATOR_COMMAND": "downgrade", "MIGRATOR_TARGET": "base"},
        [],
        "MIGRATOR_ALLOW_DOWNGRADE=true",
    ),
    (
        "missing config file",
        {"MIGRATOR_CONFIG": "/nonexistent/alembic.ini"},
        ["upgrade"],
        "MIGRATOR_CONFIG: /nonexistent/alembic.ini is not a file",
    ),
    ("unknown command", {}, ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("downgrade without target", {}, ["downgrade"], "required: TARGET"),
    ("unknown target", {}, ["upgrade", "deadbeef"], "deadbeef"),
    (
        "target that is not a revision",
        {},
        ["upgrade", "head; drop table cars"],
        "TARGET: 'head; drop table cars' is not a revision",
    ),
    ("ambiguous target prefix", {"MIGRATOR_CONFIG": TWO_HEADS}, ["upgrade", "bbb"], "bbb"),
    (
        "head with two heads",
        {"MIGRATOR_CONFIG": TWO_HEADS},
        ["upgrade", "head"],
        "the migrations have 2 heads (bbb111, bbb222)",
    ),
    (
        "missing password file",
        {"DB_PASSWORD": "", "DB_PASSWORD_FILE": "/nonexistent/pw"},
        ["upgrade"],
        "DB_PASSWORD_FILE: cannot read /nonexistent/pw",
    ),
    (
        "password and password file",
        {"DB_PASSWORD_FILE": "/etc/hostname"},
        ["upgrade"],
        "DB_PASSWORD and DB_PASSWORD_FILE: set one, not both",
    ),
    (
        "missing URL file",
        {"DATABASE_URL_FILE": "/nonexistent/url"},
        ["upgrade"],
        "DATABASE_URL_FILE: cannot read",
    ),
    (
        "garbage URL",
        {"DATABASE_URL": "not a url at all"},
        ["upgrade"],
        "DATABASE_URL: not a valid database URL",
    ),
    (
        "URL port out of range",
        {"DATABASE_URL": "postgresql://u:secret@localhost:99999/db"},
        ["upgrade"],
        "DATABASE_URL: port 99999 is out of range",
    ),
    (
        "URL port not a number",
        {"DATABASE_URL": "postgresql://u:secret@localhost:abc/db"},
        ["upgrade"],
        "DATABASE_URL: not a valid database URL",
    ),
    (
        "URL of another database",
        {"DATABASE_URL": "mysql://u:secret@localhost/db"},
        ["upgrade"],
        "PostgreSQL only, not 'mysql'",
    ),
    ("DB_PORT out of range", {"DB_PORT": "70000"}, ["upgrade"], "DB_PORT: '70000' is not a port"),
    ("DB_HOST missing", {"DB_HOST": ""}, ["upgrade"], "DB_HOST: required"),
    (
        "downgrade --sql without a range",
        {},
        ["downgrade", "base", "--sql"],
        "downgrade --sql needs FROM:TO",
    ),
]


@pytest.mark.parametrize(
    ("extra", "arguments", "named"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    database: Database, extra: dict[str, str], arguments: list[str], named: str
) -> None:
    result = run_migrator(*arguments, env={**database.env, **extra})

    assert result.status == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert named in lines[0]
    assert "ERROR" in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert database.tables() == set()  # not even alembic_version


def test_no_database_configured(tmp_path: Path) -> None:
    result = run_migrator("upgrade")

    assert result.status == 2
    assert "no database configured: set DATABASE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def broken_project(tmp_path: Path, how: str) -> Path:
    """A copy of the audited test project, broken in one way a real project can be."""
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "audited", project)
    ini, versions = project / "alembic.ini", project / "alembic" / "versions"
    if how == "revision syntax":
        (versions / "a3_maybe_failing.py").write_text("revision = 'a3'\ndef upgrade(:\n")
    elif how == "no [alembic] section":
        ini.write_text("[logging]\nlevel = INFO\n")
    elif how == "not UTF-8":
        ini.write_bytes("[alembic]\nscript_location = caf\xe9\n".encode("latin-1"))
    elif how == "env.py import":
        (project / "alembic" / "env.py").write_text("import no_such_module_here\n")
    return ini


@pytest.mark.parametrize(
    ("how", "arguments", "named"),
    [
        ("revision syntax", ["upgrade", "head"], "a3_maybe_failing.py:2: SyntaxError"),
        ("revision syntax", ["plan", "upgrade", "head"], "a3_maybe_failing.py:2: SyntaxError"),
        ("no [alembic] section", ["upgrade", "head"], "alembic.ini"),
        ("not UTF-8", ["current"], "alembic.ini: not UTF-8 text"),
        ("env.py import", ["upgrade", "head"], "env.py: ModuleNotFoundError"),
        ("env.py import", ["current"], "env.py: ModuleNotFoundError"),
    ],
)
def test_a_broken_project_file_is_exit_2_naming_the_file(
    database: Database, tmp_path: Path, how: str, arguments: list[str], named: str
) -> None:
    ini = broken_project(tmp_path, how)
    result = run_migrator(*arguments, env={**database.env, "MIGRATOR_CONFIG": str(ini)})

    assert result.status == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and named in errors[0], result.stderr
    assert "unexpected" not in result.stderr
    assert "Traceback" not in result.output
    assert database.tables() == set()


def test_a_role_denied_the_version_table_is_exit_6(database: Database) -> None:
    audited = {"MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini")}
    run_migrator("upgrade", "head", env={**database.env, **audited})
    database.query(f"REVOKE ALL ON alembic_version FROM {ROLE}")  # as its owner may
    result = run_migrator("current", env={**database.env, **audited})

    assert result.status == 6, result.output
    assert "permission denied" in result.stderr
    assert "unexpected" not in result.stderr
