"""Waiting for the database: transient failures retried, permanent ones fail at once."""

from __future__ import annotations

import re
import threading
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from conftest import PASSWORD, ROLE, Database, Server, free_port, run_migrator, start_postgres

# The core: each test on psycopg 3 and on psycopg2.
pytestmark = pytest.mark.both_drivers


def test_server_absent_gives_up_at_the_wait_timeout_with_exit_3(driver: str) -> None:
    password = quote(PASSWORD, safe="")
    env = {
        "DATABASE_URL": f"postgresql+{driver}://app:{password}@127.0.0.1:{free_port()}/app",
        "MIGRATOR_WAIT_TIMEOUT": "1.5",
    }

    result = run_migrator("upgrade", env=env)

    assert result.status == 3, result.output
    # The first wait line reads as a wait, not an error; the failure keeps the driver's words.
    first = next(line for line in result.stderr.splitlines() if "waiting for" in line)
    assert " INFO " in first, first
    assert first.endswith(
        "waiting for the database (not accepting connections yet): connection refused"
    ), first
    assert "database not reachable within 1.5 s (MIGRATOR_WAIT_TIMEOUT)" in result.stderr
    assert "Connection refused" in result.stderr
    assert 1.0 < result.seconds < 10
    assert "status=unreachable" in result.stderr


def test_unresolvable_host_is_retried_then_exit_3(driver: str) -> None:
    password = quote(PASSWORD, safe="")
    env = {
        "DATABASE_URL": f"postgresql+{driver}://app:{password}@no-such-host.invalid/app",
        "MIGRATOR_WAIT_TIMEOUT": "1",
    }

    result = run_migrator("wait", env=env)

    assert result.status == 3, result.output
    # libpq's words (psycopg2), or psycopg 3's, which resolves the name itself.
    assert re.search(
        r"waiting for the database \(not accepting connections yet\): "
        r"(could not translate host name|failed to resolve host) .no-such-host\.invalid",
        result.stderr,
    ), result.stderr


def test_wait_timeout_zero_tries_once(driver: str) -> None:
    env = {
        "DATABASE_URL": f"postgresql+{driver}://app@127.0.0.1:{free_port()}/app",
        "MIGRATOR_WAIT_TIMEOUT": "0",
    }

    result = run_migrator("wait", env=env)

    assert result.status == 3
    assert "Connection refused" in result.stderr
    assert "waiting for the database" not in result.stderr  # no retry was scheduled
    assert result.seconds < 5


def test_wrong_password_fails_at_once_with_exit_6(database: Database) -> None:
    env = {**database.env_with(password="not-the-password"), "MIGRATOR_WAIT_TIMEOUT": "60"}

    result = run_migrator("upgrade", env=env)

    assert result.status == 6, result.output
    assert "password authentication failed" in result.stderr
    assert "check the user and password of DATABASE_URL (or DB_USER" in result.stderr
    assert result.seconds < 10  # well before the 60 s wait timeout
    assert "status=access denied" in result.stderr


def test_unknown_role_fails_at_once_with_exit_6(database: Database) -> None:
    result = run_migrator("wait", env=database.env_with(user="nobody_here"))

    assert result.status == 6
    # With password authentication the server does not say whether the role exists.
    assert 'password authentication failed for user "nobody_here"' in result.stderr


def test_unknown_database_fails_at_once_with_exit_2(database: Database) -> None:
    """A decision: a database that does not exist is a configuration error, not a wait."""
    result = run_migrator(
        "upgrade", env={**database.env_with(name="no_such_db"), "MIGRATOR_WAIT_TIMEOUT": "60"}
    )

    assert result.status == 2
    assert 'database "no_such_db" does not exist' in result.stderr
    assert "check the database name and options of DATABASE_URL (or DB_NAME)" in result.stderr
    assert result.seconds < 10


def test_too_many_connections_is_retried_until_a_slot_frees(
    server: Server, database: Database
) -> None:
    with server.admin.connect() as admin:
        admin.execute(
            sa.text(f"CREATE ROLE limited LOGIN PASSWORD '{PASSWORD}' CONNECTION LIMIT 1")
        )
        admin.execute(sa.text(f"GRANT ALL ON DATABASE {database.name} TO limited"))
    url = database.psycopg2_url.replace(f"{ROLE}:", "limited:", 1)
    hog_engine = sa.create_engine(url, poolclass=sa.NullPool)  # close() ends the session
    hog = hog_engine.connect()
    threading.Timer(2.0, hog.close).start()
    try:
        result = run_migrator(
            "wait", env={**database.env_with(user="limited"), "MIGRATOR_WAIT_TIMEOUT": "30"}
        )
    finally:
        hog_engine.dispose()
        with server.admin.connect() as admin:
            admin.execute(sa.text(f"REVOKE ALL ON DATABASE {database.name} FROM limited"))
            admin.execute(sa.text("DROP ROLE limited"))

    assert result.status == 0, result.output
    assert "too many connections" in result.stderr
    assert result.seconds >= 1.5


def test_server_that_starts_three_seconds_late(driver: str) -> None:
    port = free_port()
    containers = []
    starter = threading.Timer(
        3.0, lambda: containers.append(start_postgres(port=port, dbname="app"))
    )
    starter.start()
    try:
        result = run_migrator(
            "upgrade",
            "head",
            env={
                "DATABASE_URL": f"postgresql+{driver}://test:admin-secret@127.0.0.1:{port}/app",
                "MIGRATOR_WAIT_TIMEOUT": "90",
            },
        )
    finally:
        starter.join()
        for container in containers:
            container.stop()

    assert result.status == 0, result.output
    assert "waiting for the database" in result.stderr
    assert "applied=4" in result.stderr
    assert result.seconds > 3
