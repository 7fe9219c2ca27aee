"""A server that does not speak English: a failed connection is classified the same.

A failed connection carries no SQLSTATE in either driver, and the server words its refusal
in its own `lc_messages` language. Real servers here (PostgreSQL's own binaries, initdb'd
with German and Japanese messages): a wrong password and an unknown role are exit 6, an
unknown database exit 2, each at once (not after the wait timeout), with psycopg2 and
psycopg 3 alike.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import HELPER_DRIVER, Result, free_port, run_alembic, run_migrator
from test_server_states import as_server_user, server_binaries

SECRET = "Sprachen-geheim-7"
LANGUAGES = {
    "de_DE.UTF-8": "Passwort-Authentifizierung für Benutzer",
    "ja_JP.UTF-8": "パスワード認証に失敗しました",
}
DRIVERS = ["postgresql+psycopg2", "postgresql+psycopg"]


@pytest.fixture(scope="module", params=sorted(LANGUAGES))
def speaking(request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    """A server whose messages are in the parameter's language; (port, language)."""
    with local_server(request.param) as port:
        yield port, request.param


@contextlib.contextmanager
def local_server(language: str, *initdb: str) -> Iterator[int]:
    """A PostgreSQL server initialised in `language` (and `initdb` options); its port."""
    binaries = server_binaries()
    directory = Path(tempfile.mkdtemp(prefix="migrator-lang-"))
    shutil.chown(directory, "postgres")
    data = directory / "data"
    port = free_port()
    password_file = directory / "password"
    password_file.write_text(SECRET)
    shutil.chown(password_file, "postgres")
    subprocess.run(
        as_server_user(
            binaries / "initdb",
            "-D",
            data,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={password_file}",
            f"--locale={language}",
            *initdb,
        ),
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c lc_messages={language}"
    subprocess.run(
        as_server_user(
            binaries / "pg_ctl", "-D", data, "-o", options, "-l", directory / "log", "-w", "start"
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield port
    finally:
        subprocess.run(
            as_server_user(binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"),
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


def _run(
    driver: str,
    port: int,
    user: str,
    password: str,
    database: str,
    *args: str,
    config: Path | None = None,
) -> Result:
    url = f"{driver}://{user}:{password}@127.0.0.1:{port}/{database}"
    env = {"DATABASE_URL": url, "MIGRATOR_WAIT_TIMEOUT": "30"}
    env |= {"MIGRATOR_CONFIG": str(config)} if config else {}
    return run_migrator(*(args or ("current",)), env=env)


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_wrong_password_is_exit_6_at_once(speaking: tuple[int, str], driver: str) -> None:
    port, language = speaking
    result = _run(driver, port, "postgres", "not-the-password", "postgres")
    assert result.status == 6, result.output
    assert LANGUAGES[language] in result.output  # it spoke so
    assert result.seconds < 10  # not the 30 s wait


# (user, password, database, exit status): what fails for good, whatever the language.
REFUSED = {
    "an unknown role": ("nobody_here", SECRET, "postgres", 6),
    "an unknown database": ("postgres", SECRET, "no_such_database", 2),
}


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("driver", DRIVERS)
def test_what_fails_for_good_fails_at_once(
    speaking: tuple[int, str], driver: str, case: str
) -> None:
    port, _ = speaking
    user, password, database, status = REFUSED[case]
    result = _run(driver, port, user, password, database)
    assert result.status == status, result.output
    assert result.seconds < 10  # not the 30 s wait


@pytest.mark.parametrize("driver", DRIVERS)
def test_the_right_credentials_migrate(
    speaking: tuple[int, str], driver: str, tmp_path: Path
) -> None:
    """`alembic init`'s project, env.py unchanged, with one revision: applied on a server
    that speaks the language, then read back."""
    port, _ = speaking
    assert run_alembic("init", "alembic", cwd=tmp_path).returncode == 0
    rev_id = f"w{uuid.uuid4().hex[:8]}"
    made = run_alembic("revision", "-m", "widgets", "--rev-id", rev_id, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    revision = next((tmp_path / "alembic" / "versions").glob(f"{rev_id}_*.py"))
    body = (
        f"    op.create_table('widgets_{rev_id}', sa.Column('id', sa.Integer, primary_key=True))\n"
    )
    revision.write_text(
        revision.read_text().replace("def upgrade() -> None:\n", "def upgrade() -> None:\n" + body)
    )
    config = tmp_path / "alembic.ini"
    database = f"lang_{rev_id}"
    admin = sa.create_engine(
        f"postgresql+{HELPER_DRIVER}://postgres:{SECRET}@127.0.0.1:{port}/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {database}"))
    admin.dispose()

    applied = _run(driver, port, "postgres", SECRET, database, "upgrade", "head", config=config)
    current = _run(driver, port, "postgres", SECRET, database, "current", config=config)

    assert applied.status == 0, applied.output
    assert f"to={rev_id} applied=1" in applied.stderr
    assert current.status == 0 and rev_id in current.stdout, current.output
    # The deploy ledger on that server: the row, and an edit of the applied revision's code
    # stops the next run (exit 2), whatever language the server speaks.
    ledger = _run(driver, port, "postgres", SECRET, database, "history", "--ledger", "--json",
                  config=config)  # fmt: skip
    assert [(row["revision"], row["outcome"]) for row in json.loads(ledger.stdout)] == [
        (rev_id, "applied")
    ], ledger.output
    revision.write_text(revision.read_text().replace(f"widgets_{rev_id}", f"gadgets_{rev_id}"))
    edited = _run(driver, port, "postgres", SECRET, database, "upgrade", "head", config=config)
    assert edited.status == 2, edited.output
    assert f"revision {rev_id} was changed after it was applied" in edited.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_an_sql_ascii_database_migrates_on_either_driver(driver: str, tmp_path: Path) -> None:
    """initdb on a machine without locales (a fresh container) makes SQL_ASCII databases,
    whose text psycopg 3 hands back as bytes: the migrator asks for UTF-8 text."""
    with local_server("C", "--encoding=SQL_ASCII") as port:
        upgraded = _run(driver, port, "postgres", SECRET, "postgres", "upgrade", "head")
        current = _run(driver, port, "postgres", SECRET, "postgres", "current")

    assert upgraded.status == 0, upgraded.output
    assert "status=ok" in upgraded.stderr
    assert current.status == 0 and "(head)" in current.stdout, current.output
