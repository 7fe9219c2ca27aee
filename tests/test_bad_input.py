"""Bad input: one line naming the problem (the variable, or the project's file and line), the
status SPEC.md gives it (2; 1 for a revision that fails while it is applied, rolled back), no
traceback, no password (run_migrator checks every output), nothing changed in the database."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import PASSWORD, PROJECTS, ROLE, Database, run_migrator

TWO_HEADS = str(PROJECTS / "two_heads" / "alembic.ini")
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")
NOT_UTF8 = "\udcff"  # how Python keeps a byte that is not UTF-8 (0xff) of an environment value
NOWHERE = f"postgresql://u:{quote(PASSWORD, safe='')}"  # a URL with the password, up to @

# (case, extra environment, arguments, what the one line must name): refused before connecting.
CONFIGURATION: list[tuple[str, dict[str, str], list[str], str]] = [
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
        "MIGRATOR_CONFIG: /nonexistent/alembic.ini is not a file: no Alembic project there; "
        "run it in your project's directory (beside alembic.ini), or set MIGRATOR_CONFIG (or "
        "--config) to your alembic.ini",
    ),
    ("unknown command", {}, ["frobnicate"], "invalid choice: 'frobnicate'"),
    ("downgrade without target", {}, ["downgrade"], "required: TARGET"),
    (
        "target that is not a revision",
        {},
        ["upgrade", "head; drop table cars"],
        "TARGET: 'head; drop table cars' is not a revision",
    ),
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
    # Issue 22: PostgreSQL keeps these as an int of milliseconds (at most 2147483647): more
    # was retried as an outage, then exit 3; 1e308 was an unexpected OverflowError.
    *(
        (f"{name} {value}", {name: value}, ["upgrade"], f"{name}: {value!r}")
        for name in ("MIGRATOR_STATEMENT_TIMEOUT", "MIGRATOR_DDL_LOCK_TIMEOUT")
        for value in ("3000000", "2147483.648", "1e308", "nan", "inf", "-1")
    ),
    *(
        (
            f"MIGRATOR_NETWORK_TIMEOUT {value}",
            {"MIGRATOR_NETWORK_TIMEOUT": value},
            ["upgrade"],
            f"MIGRATOR_NETWORK_TIMEOUT: {value!r}",
        )
        for value in ("3000000", "98304", "0", "-30", "1.5", "²")
    ),
    *(
        (
            f"MIGRATOR_CONNECT_TIMEOUT {value}",
            {"MIGRATOR_CONNECT_TIMEOUT": value},
            ["current"],
            f"MIGRATOR_CONNECT_TIMEOUT: {value!r}",
        )
        for value in ("3000000000", "²")
    ),
    (
        "wait timeout nan",
        {"MIGRATOR_WAIT_TIMEOUT": "nan"},
        ["upgrade"],
        "MIGRATOR_WAIT_TIMEOUT: 'nan'",
    ),
    (
        "lock timeout -inf",
        {"MIGRATOR_LOCK_TIMEOUT": "-inf"},
        ["upgrade"],
        "MIGRATOR_LOCK_TIMEOUT: '-inf'",
    ),
    (
        "ddl lock retries superscript",
        {"MIGRATOR_DDL_LOCK_RETRIES": "²"},
        ["upgrade"],
        "MIGRATOR_DDL_LOCK_RETRIES: '²'",
    ),
    (
        "ddl lock retries 5000 digits",
        {"MIGRATOR_DDL_LOCK_RETRIES": "9" * 5000},
        ["upgrade"],
        "MIGRATOR_DDL_LOCK_RETRIES: '999",
    ),
    (
        "safety rows 1e5",
        {"MIGRATOR_SAFETY_ERROR_ROWS": "1e5"},
        ["upgrade"],
        "MIGRATOR_SAFETY_ERROR_ROWS: '1e5'",
    ),
    ("DB_PORT superscript", {"DB_PORT": "5²"}, ["current"], "DB_PORT: '5²' is not a port"),
    # A byte that is not UTF-8 gave a 22-line traceback (DB_PASSWORD); it is never echoed.
    *(
        (f"{name} not UTF-8", {name: value}, ["current"], f"{name}: not UTF-8 text")
        for name, value in (
            ("DB_PASSWORD", f"{PASSWORD}{NOT_UTF8}"),
            ("DB_NAME", f"app{NOT_UTF8}"),
            ("MIGRATOR_CONFIG", f"/tmp/alembic{NOT_UTF8}.ini"),
        )
    ),
    (
        "DATABASE_URL not UTF-8",
        {"DATABASE_URL": f"{NOWHERE}{NOT_UTF8}@localhost/db"},
        ["current"],
        "DATABASE_URL: not UTF-8 text",
    ),
    # What no connection can carry: it waited for DNS or the server, then exit 3.
    (
        "100 KB DATABASE_URL",
        {"DATABASE_URL": f"{NOWHERE}@localhost/{'a' * 100_000}"},
        ["current"],
        "DATABASE_URL: 1000",
    ),
    (
        "100 KB MIGRATOR_VERIFY_URL",
        {"MIGRATOR_VERIFY_URL": f"{NOWHERE}@localhost/{'a' * 100_000}"},
        ["verify"],
        "MIGRATOR_VERIFY_URL: 1000",
    ),
    (
        "URL database name of 64 bytes",
        {"DATABASE_URL": f"{NOWHERE}@localhost/{'d' * 64}"},
        ["current"],
        "DATABASE_URL: the database name is 64 bytes",
    ),
    (
        "DB_HOST of 254 characters",
        {"DB_HOST": "h" * 254},
        ["current"],
        "DB_HOST: the host name is 254",
    ),
    (
        "DB_USER of 100 KB",
        {"DB_USER": "u" * 100_000},
        ["current"],
        "DB_USER: the user name is 100000 bytes",
    ),
    (
        "DB_NAME of 64 bytes",
        {"DB_NAME": "é" * 32},
        ["current"],
        "DB_NAME: the database name is 64 bytes",
    ),
    # MIGRATOR_VERIFY_URL is refused whatever the command.
    *(
        (
            f"invalid MIGRATOR_VERIFY_URL, {' '.join(arguments)}",
            {"MIGRATOR_VERIFY_URL": "not a url"},
            arguments,
            "MIGRATOR_VERIFY_URL: not a valid database URL",
        )
        for arguments in (["upgrade", "head"], ["current"], ["wait"])
    ),
]


def env_py(text: str) -> Callable[[Path], None]:
    return lambda project: (project / "alembic" / "env.py").write_text(text)


def revision(name: str, text: str) -> Callable[[Path], None]:
    return lambda project: (project / "alembic" / "versions" / name).write_text(text)


def a3(body: str, down: str = "a2a2a2a2a2a2") -> Callable[[Path], None]:
    """Revision a3, the last of the audited project, with `body` after its identifiers."""
    return revision(
        "a3_maybe_failing.py",
        f"from alembic import op\nrevision = 'a3a3a3a3a3a3'\ndown_revision = {down!r}\n{body}",
    )


def a1_upgrade(statement: str) -> Callable[[Path], None]:
    """Revision a1, the first, whose upgrade creates a table and then runs `statement`."""
    return revision(
        "a1_create_applied.py",
        "from alembic import op\nrevision = 'a1a1a1a1a1a1'\ndown_revision = None\n"
        "def upgrade():\n    op.execute('CREATE TABLE applied (revision text)')\n"
        f"    {statement}\n"
        "def downgrade():\n    op.execute('DROP TABLE applied')\n",
    )


def a3_downgrade(statement: str) -> Callable[[Path], None]:
    return a3(
        "def upgrade():\n    pass\n"
        f"def downgrade():\n    op.execute('DROP TABLE applied')\n    {statement}\n"
    )


def duplicate_a2(project: Path) -> None:
    versions = project / "alembic" / "versions"
    shutil.copy(versions / "a2_slow.py", versions / "a2_again.py")


def ini(text: str) -> Callable[[Path], None]:
    return lambda project: (project / "alembic.ini").write_text(text)


def ini_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda project: (project / "alembic.ini").write_bytes(data)


@dataclass(frozen=True)
class Broken:
    """A copy of the audited project, broken in one way a real project can be."""

    name: str
    breaks: Callable[[Path], None]
    arguments: list[str]
    status: int
    named: str
    at_head: bool = False  # the database is first upgraded to head, by the intact project
    env: dict[str, str] = field(default_factory=dict)


KEY = "import os\nos.environ['MIGRATOR_TEST_NOT_SET']\n"
BROKEN: list[Broken] = [
    # Issue 22: errors in env.py or a revision as it loads were "unexpected" (exit 1).
    *(
        Broken(
            f"env.py KeyError, {' '.join(arguments)}",
            env_py(KEY),
            arguments,
            2,
            "env.py:2: KeyError: 'MIGRATOR_TEST_NOT_SET'",
        )
        for arguments in (
            ["upgrade", "head"],
            ["current"],
            ["plan", "upgrade", "head"],
            ["check"],
            ["history"],
        )
    ),
    Broken(
        "env.py RuntimeError",
        env_py("raise RuntimeError('broken on purpose')\n"),
        ["upgrade"],
        2,
        "env.py:1: RuntimeError: broken on purpose",
    ),
    Broken(
        "env.py RuntimeError, offline",
        env_py("raise RuntimeError('broken on purpose')\n"),
        ["upgrade", "--sql"],
        2,
        "env.py:1: RuntimeError: broken on purpose",
    ),
    Broken(
        "env.py NameError",
        env_py("from alembic import context\n\nrun_migrations(None)\n"),
        ["upgrade"],
        2,
        "env.py:3: NameError: name 'run_migrations'",
    ),
    Broken(
        "env.py import",
        env_py("import no_such_module_here\n"),
        ["upgrade", "head"],
        2,
        "env.py:1: ModuleNotFoundError",
    ),
    Broken(
        "env.py import, current",
        env_py("import no_such_module_here\n"),
        ["current"],
        2,
        "env.py:1: ModuleNotFoundError",
    ),
    Broken("env.py syntax", env_py("def broken(:\n"), ["current"], 2, "env.py:1: SyntaxError"),
    Broken(
        "env.py sys.exit",
        env_py("import sys\nsys.exit(3)\n"),
        ["upgrade"],
        2,
        "env.py (or a revision it ran) called sys.exit(3)",
    ),
    Broken(
        "revision NameError as loaded",
        a3("undefined_name\n"),
        ["upgrade", "head"],
        2,
        "a3_maybe_failing.py:4: NameError: name 'undefined_name' is not defined",
    ),
    Broken(
        "revision NameError as loaded, plan",
        a3("undefined_name\n"),
        ["plan", "upgrade", "head"],
        2,
        "a3_maybe_failing.py:4: NameError",
    ),
    Broken(
        "revision ZeroDivisionError as loaded",
        a3("SIZE = 1 / 0\n"),
        ["current"],
        2,
        "a3_maybe_failing.py:4: ZeroDivisionError",
    ),
    Broken(
        "revision import",
        a3("import no_such_module_here\n"),
        ["upgrade"],
        2,
        "a3_maybe_failing.py:4: ModuleNotFoundError",
    ),
    Broken(
        "revision syntax",
        a3("def upgrade(:\n"),
        ["upgrade", "head"],
        2,
        "a3_maybe_failing.py:4: SyntaxError",
    ),
    Broken(
        "revision syntax, plan",
        a3("def upgrade(:\n"),
        ["plan", "upgrade", "head"],
        2,
        "a3_maybe_failing.py:4: SyntaxError",
    ),
    Broken(
        "unknown down_revision",
        a3("", down="zzzz"),
        ["upgrade", "head"],
        2,
        "a3_maybe_failing.py: down_revision 'zzzz' is no revision",
    ),
    Broken(
        "unknown down_revision, current",
        a3("", down="zzzz"),
        ["current"],
        2,
        "a3_maybe_failing.py: down_revision 'zzzz'",
    ),
    Broken(
        "duplicate revision id",
        duplicate_a2,
        ["upgrade", "head"],
        2,
        "both are revision a2a2a2a2a2a2",
    ),
    Broken(
        "duplicate revision id, history",
        duplicate_a2,
        ["history"],
        2,
        "both are revision a2a2a2a2a2a2",
    ),
    Broken(
        "revision is its own down_revision",
        a3("", down="a3a3a3a3a3a3"),
        ["current"],
        2,
        "alembic.ini",
    ),
    Broken(
        "no [alembic] section",
        ini("[logging]\nlevel = INFO\n"),
        ["upgrade", "head"],
        2,
        "alembic.ini",
    ),
    Broken(
        "alembic.ini not UTF-8",
        ini_bytes("[alembic]\nscript_location = caf\xe9\n".encode("latin-1")),
        ["current"],
        2,
        "alembic.ini: not UTF-8 text",
    ),
    Broken(
        "script_location missing",
        ini("[alembic]\nscript_location = %(here)s/nowhere\n"),
        ["current"],
        2,
        "nowhere",
    ),
    # Failing while applied: a migration failed (1), its revision rolled back: nothing changed.
    Broken(
        "revision NameError as applied",
        a1_upgrade("undefined_name"),
        ["upgrade", "head"],
        1,
        "a1_create_applied.py:6: NameError: name 'undefined_name' is not defined",
    ),
    Broken(
        "revision TypeError from op as applied",
        a1_upgrade("op.add_column('applied')"),
        ["upgrade", "head"],
        1,
        "a1_create_applied.py:6: TypeError",
    ),
    Broken(
        "revision KeyError as applied",
        a1_upgrade("{}['missing']"),
        ["upgrade"],
        1,
        "a1_create_applied.py:6: KeyError: 'missing'",
    ),
    Broken(
        "revision RuntimeError as reverted",
        a3_downgrade("raise RuntimeError('cannot undo')"),
        ["downgrade", "a2a2a2a2a2a2"],
        1,
        "a3_maybe_failing.py:8: RuntimeError: cannot undo",
        at_head=True,
        # Its downgrade was edited after it was applied: the ledger would stop the run (2).
        env={"MIGRATOR_ON_CHANGED_REVISION": "warn"},
    ),
    Broken(
        "revision SQL error as applied",
        a1_upgrade("op.execute('SELECT * FROM no_such_table')"),
        ["upgrade"],
        1,
        'relation "no_such_table" does not exist',
    ),
]


@dataclass(frozen=True)
class Row:
    """One bad input: what is run, what it must say and exit with."""

    env: dict[str, str]
    arguments: list[str]
    status: int
    named: str
    breaks: Callable[[Path], None] | None = None
    at_head: bool = False
    manifest: bool = False  # the project's manifest is written (a no-op deploy's fast path)


ROWS: dict[str, Row] = {
    **{name: Row(env, arguments, 2, named) for name, env, arguments, named in CONFIGURATION},
    **{
        case.name: Row(case.env, case.arguments, case.status, case.named, case.breaks, case.at_head)
        for case in BROKEN
    },
    # Issue 22: a no-op deploy answered by the manifest did not look at MIGRATOR_VERIFY_URL.
    "invalid MIGRATOR_VERIFY_URL, no-op deploy": Row(
        {"MIGRATOR_VERIFY_URL": "not a url"},
        ["upgrade", "head"],
        2,
        "MIGRATOR_VERIFY_URL: not a valid database URL",
        at_head=True,
        manifest=True,
    ),
    "MIGRATOR_VERIFY_URL of a database that does not exist": Row(
        {"MIGRATOR_VERIFY_URL": "DATABASE/migrator_no_such_database"},
        ["verify"],
        2,
        'database "migrator_no_such_database" does not exist',
    ),
}


@pytest.mark.parametrize("name", list(ROWS))
def test_bad_input_is_one_line_and_changes_nothing(
    database: Database, tmp_path: Path, name: str
) -> None:
    row = ROWS[name]
    # A regression that waits for the database fails in seconds, not a minute.
    env = {**database.env, "MIGRATOR_WAIT_TIMEOUT": "2", "MIGRATOR_SAFETY": "off"}
    if row.breaks is not None or row.at_head or row.manifest:
        project = tmp_path / "project"
        shutil.copytree(PROJECTS / "audited", project)
        env["MIGRATOR_CONFIG"] = str(project / "alembic.ini")
        if row.manifest:
            assert run_migrator("manifest", env=env).status == 0
        if row.at_head:
            assert run_migrator("upgrade", "head", env=env).status == 0
        if row.breaks is not None:
            row.breaks(project)
    env.update(
        {
            key: value.replace("DATABASE/", database.url.rsplit("/", 1)[0] + "/")
            for key, value in row.env.items()
        }
    )
    before = (database.revision(), database.tables() - {"migrator_ledger"})

    result = run_migrator(*row.arguments, env=env)

    assert result.status == row.status, result.output
    lines = result.stderr.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), result.stderr  # no traceback, no dump
    errors = [line for line in lines if LOG_LINE.match(line) and " ERROR " in line[:32]]
    assert len(errors) == 1 and row.named in errors[0], result.stderr
    assert "unexpected" not in errors[0]
    if row.status == 2 and name in dict((case[0], case) for case in CONFIGURATION):
        assert len(lines) == 1, result.stderr  # refused before connecting: the one line only
    assert result.stdout == ""
    assert (database.revision(), database.tables() - {"migrator_ledger"}) == before
    # The deploy ledger: of a revision that failed, that it failed; else nothing failed.
    failures = (
        database.query("SELECT revision FROM migrator_ledger WHERE outcome = 'failed'")
        if "migrator_ledger" in database.tables()
        else []
    )
    assert len(failures) == (1 if row.status == 1 else 0)


@pytest.mark.parametrize(
    ("config", "at", "target", "message"),
    [
        (
            None,
            "c3f9b7d21a58",
            "deadbeef",
            "target 'deadbeef': Can't locate revision identified by 'deadbeef'",
        ),
        (
            TWO_HEADS,
            "aaa111",
            "bbb",
            "target 'bbb' is ambiguous: 2 revisions start with 'bbb' (bbb111, bbb222); give "
            "more of the one you mean",
        ),
    ],
    ids=["unknown target", "ambiguous target prefix"],
)
def test_a_target_no_revision_answers_is_one_whole_line_and_changes_nothing(
    database: Database, config: str | None, at: str, target: str, message: str
) -> None:
    env = {**database.env, "MIGRATOR_WAIT_TIMEOUT": "2"}
    if config is not None:
        env["MIGRATOR_CONFIG"] = config
    assert run_migrator("upgrade", at, env=env).status == 0
    before = (database.revision(), database.tables())

    result = run_migrator("upgrade", target, env=env)

    assert result.status == 2, result.output
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()  # refused before connecting: the one line only
    assert re.fullmatch(LOG_LINE.pattern + " *" + re.escape(message), line), line
    assert (database.revision(), database.tables()) == before == (at, before[1])


def test_no_database_configured(tmp_path: Path) -> None:
    result = run_migrator("upgrade")

    assert result.status == 2
    assert "no database configured: set DATABASE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_role_denied_the_version_table_is_exit_6(database: Database) -> None:
    audited = {"MIGRATOR_CONFIG": str(PROJECTS / "audited" / "alembic.ini")}
    run_migrator("upgrade", "head", env={**database.env, **audited})
    database.query(f"REVOKE ALL ON alembic_version FROM {ROLE}")  # as its owner may
    result = run_migrator("current", env={**database.env, **audited})

    assert result.status == 6, result.output
    assert "permission denied" in result.stderr
    assert "grant the role that privilege (the message names the object" in result.stderr
    assert "unexpected" not in result.stderr
