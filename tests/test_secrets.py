"""No spelling of a password in any output, and a password taken exactly as given.

Each awkward password, given each way the migrator takes one, through a successful run
(with --debug and JSON logs), a wrong password, an unreachable host, an env.py that raises
with its URL in the message, and the GitHub action.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from conftest import (
    PROJECTS,
    ROLE,
    Database,
    free_port,
    run_migrator,
)
from test_github_actions import run_action

from migrator.masking import SHORT_PASSWORD, spellings

AUDITED = PROJECTS / "audited" / "alembic.ini"
PASSWORDS = {
    "url characters": "p@ss:w/rd?#%&+=x",
    "space": "correct horse battery",
    "trailing space": "trailing-space ",
    "non-ASCII": "pä ss+wörd",
    "ampersand": "Tr0ub4dor & 3",
    "newline": "line\nbreak-here",
    "short": "a1a1",  # inside every audited revision id, which must print unchanged
}
# Passwords written into DATABASE_URL without URL-encoding, as SQLAlchemy accepts them (it
# reads up to the @): a % that is not an escape, a #, a / and a ?.
UNENCODED = {
    "bare percent": "Pa%zz-unencoded-1",
    "hash": "Pa#frag-unencoded-2",
    "slash and question": "Pa/sl?q-unencoded-3",
}
WAYS = ("DB_PASSWORD", "DB_PASSWORD_FILE", "DATABASE_URL", "?password=")


def leaks(password: str, output: str) -> list[str]:
    """The spellings of `password` that `output` shows (a short one: standing alone)."""
    found = []
    for form in spellings(password):
        if len(password) >= SHORT_PASSWORD:
            hit = form in output
        else:
            hit = re.search(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", output)
        if hit:
            found.append(form)
    return found


@pytest.fixture
def role(database: Database, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A role whose password is the test's, owning the test's database."""
    password = {**PASSWORDS, **UNENCODED}[request.param]
    name = f"secret_{uuid.uuid4().hex[:8]}"
    literal = password.replace("'", "''")
    with database.server.admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {name} LOGIN PASSWORD '{literal}'"))
        connection.execute(sa.text(f"ALTER DATABASE {database.name} OWNER TO {name}"))
    yield name, password
    engine = sa.create_engine(
        database.server.admin.url.set(database=database.name), isolation_level="AUTOCOMMIT"
    )
    with engine.connect() as connection:
        connection.execute(
            sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :n"),
            {"n": name},
        )
        connection.execute(sa.text(f"REASSIGN OWNED BY {name} TO {ROLE}"))
        connection.execute(sa.text(f"DROP OWNED BY {name}"))
        connection.execute(sa.text(f"DROP ROLE {name}"))
    engine.dispose()


def given(
    way: str, database: Database, user: str, password: str, tmp_path: Path, port: int = 0
) -> dict[str, str]:
    """The environment that gives `password` the way a user would (to `port`, if given)."""
    host, name = database.server.host, database.name
    port = port or database.server.port
    if way in ("DB_PASSWORD", "DB_PASSWORD_FILE"):
        parts = {"DB_HOST": host, "DB_PORT": str(port), "DB_NAME": name, "DB_USER": user}
        if way == "DB_PASSWORD":
            return {**parts, "DB_PASSWORD": password}
        secret = tmp_path / f"password-{uuid.uuid4().hex[:6]}"
        secret.write_text(password + "\n")  # as `echo` writes it
        return {**parts, "DB_PASSWORD_FILE": str(secret)}
    encoded = quote(password, safe="")
    if way == "DATABASE_URL":
        return {"DATABASE_URL": f"postgresql://{user}:{encoded}@{host}:{port}/{name}"}
    return {"DATABASE_URL": f"postgresql://{user}@{host}:{port}/{name}?password={encoded}"}


def raising_env_py_project(tmp_path: Path) -> Path:
    project = tmp_path / "raising"
    shutil.copytree(PROJECTS / "audited", project)
    (project / "alembic" / "env.py").write_text(
        "from alembic import context\n\n"
        "url = context.config.get_main_option('sqlalchemy.url')\n"
        "raise RuntimeError(f'cannot use {url}')\n"
    )
    return project / "alembic.ini"


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("role", list(PASSWORDS), indirect=True)
def test_a_password_is_taken_as_given_and_never_shown(
    database: Database, role: tuple[str, str], way: str, tmp_path: Path
) -> None:
    user, password = role
    env = {**given(way, database, user, password, tmp_path), "MIGRATOR_CONFIG": str(AUDITED)}
    outputs = []

    ok = run_migrator("--debug", "--log-format", "json", "upgrade", "head", env=env)
    outputs.append(ok.output)
    assert ok.status == 0, ok.output
    assert "a1a1a1a1a1a1" in ok.stderr  # a revision id that holds a short password is kept

    current = run_migrator("current", "--json", env=env)
    outputs.append(current.output)
    assert current.status == 0 and '"current": ["a3a3a3a3a3a3"]' in current.stdout

    for status, changed in (
        (6, given(way, database, user, password + "x", tmp_path)),  # a wrong password
        (3, given(way, database, user, password, tmp_path, port=free_port())),  # no server
    ):
        failed = run_migrator("current", env={**env, **changed, "MIGRATOR_WAIT_TIMEOUT": "0"})
        outputs.append(failed.output)
        assert failed.status == status, failed.output

    raising = {**env, "MIGRATOR_CONFIG": str(raising_env_py_project(tmp_path))}
    for flags in ([], ["--debug"], ["--log-format", "json", "--debug"]):
        failed = run_migrator(*flags, "current", env=raising)
        outputs.append(failed.output)
        # env.py raising before any revision runs: a broken project, exit 2, named by line.
        assert failed.status == 2 and "env.py:4: RuntimeError: cannot use postgresql" in (
            failed.stderr
        ), failed.output

    for output in outputs:
        assert not leaks(password, output), output


@pytest.mark.parametrize("role", list(PASSWORDS), indirect=True)
def test_the_action_masks_every_spelling_before_anything_runs(
    action_image: str, database: Database, role: tuple[str, str], tmp_path: Path
) -> None:
    user, password = role
    url = given("DATABASE_URL", database, user, password, tmp_path)["DATABASE_URL"]
    inputs = {
        "database-url": url,
        "command": "current",
        "config": "tests/projects/audited/alembic.ini",
    }
    run = run_action(action_image, tmp_path, inputs)

    assert run.status == 0, run.log
    lines = run.log.splitlines()
    masks = {line.removeprefix("::add-mask::") for line in lines if line.startswith("::add")}
    wanted = {line for form in spellings(password) for line in form.splitlines() if line.strip()}
    assert wanted <= masks
    shown = "\n".join(line for line in lines if not line.startswith("::add-mask::"))
    assert not leaks(password, shown + run.step_summary + str(run.outputs))


def test_an_unescaped_at_in_the_password_is_a_configuration_error(database: Database) -> None:
    host, port = database.server.host, database.server.port
    url = f"postgresql://app:Sup3r@Secret@{host}:{port}/{database.name}"
    result = run_migrator("upgrade", "head", env={"DATABASE_URL": url})

    assert result.status == 2, result.output
    assert "URL-encoded (@ as %40" in result.stderr
    assert "Sup3r" not in result.output and "Secret" not in result.output
    assert result.seconds < 5


def test_a_failing_huge_statement_is_cut_in_the_log(database: Database, tmp_path: Path) -> None:
    project = tmp_path / "huge"
    shutil.copytree(PROJECTS / "audited", project)
    (project / "alembic" / "versions" / "a3_maybe_failing.py").write_text(
        '"""huge failing statement"""\n\nfrom alembic import op\n\n'
        'revision = "a3a3a3a3a3a3"\ndown_revision = "a2a2a2a2a2a2"\n\n\n'
        "def upgrade() -> None:\n"
        "    op.execute(\"SELECT 1 FROM no_such_table WHERE x IN ('\" + 'x' * 5_000_000 + \"')\")\n"
    )
    env = {**database.env, "MIGRATOR_CONFIG": str(project / "alembic.ini")}
    result = run_migrator("--debug", "upgrade", "head", env=env)

    assert result.status == 1, result.output[:2000]
    assert "no_such_table" in result.stderr
    assert "characters cut" in result.stderr
    assert len(result.output) < 100_000


def test_every_secret_connection_parameter_is_hidden(database: Database) -> None:
    """libpq's secret parameters (its option list marks password, sslpassword and
    oauth_client_secret so) are hidden by name, wherever the URL is printed."""
    secret = "Ssl-key-passphrase-31"
    url = f"{database.url}?sslmode=prefer&sslpassword={secret}"
    env = {"DATABASE_URL": url, "MIGRATOR_CONFIG": str(AUDITED)}
    for args in (["--debug", "upgrade", "head"], ["--debug", "current", "--json"]):
        result = run_migrator(*args, env=env)
        assert result.status == 0, result.output
        assert "sslpassword=***" in result.stderr
        assert secret not in result.output


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2"])
@pytest.mark.parametrize("role", list(UNENCODED), indirect=True)
def test_an_unencoded_password_is_taken_as_given_and_never_shown_on_either_path(
    database: Database, role: tuple[str, str], driver: str, tmp_path: Path
) -> None:
    """With a manifest, --debug's lines of the fast path (which declines such a URL: libpq
    would read it otherwise) and of the full path show no part of the password."""
    user, password = role
    project = tmp_path / "audited"
    shutil.copytree(PROJECTS / "audited", project)
    host, port = database.server.host, database.server.port
    url = f"postgresql+{driver}://{user}:{password}@{host}:{port}/{database.name}"
    env = {"DATABASE_URL": url, "MIGRATOR_CONFIG": str(project / "alembic.ini")}
    assert run_migrator("manifest", env=env).status == 0

    first = run_migrator("upgrade", "head", env=env)
    again = run_migrator("upgrade", "head", env={**env, "MIGRATOR_LOG_LEVEL": "DEBUG"})

    assert first.status == 0, first.output
    assert again.status == 0 and "nothing to do" in again.stderr, again.output
    assert "fast path: DATABASE_URL's user or password has characters" in again.stderr
    fragments = set(password.replace("%", " ").replace("#", " ").replace("/", " ").split())
    fragments |= set(password.replace("?", " ").split())
    for output in (first.output, again.output):
        assert not leaks(password, output), output
        assert not [part for part in fragments if len(part) > 4 and part in output], output
