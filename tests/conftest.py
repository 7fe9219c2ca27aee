"""The test harness: a real PostgreSQL in a container, a fresh database per test, and the
migrator run as a user runs it (a subprocess), with every output checked for the password.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from testcontainers.community.postgres import PostgresContainer

pytest_plugins = ["conditions"]  # tests/conditions.py: production conditions as fixtures

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = Path(__file__).resolve().parent / "projects"
POSTGRES_IMAGE = os.environ.get("MIGRATOR_TEST_POSTGRES_IMAGE", "postgres:16")
# The base of the migrator image under test (scripts/test.sh picks a stand-in where no
# registry answers); the Dockerfile's own default is the official slim image.
PYTHON_IMAGE = os.environ.get("MIGRATOR_TEST_PYTHON_IMAGE", "python:3.12-slim")
# Two checkouts testing at once on one Docker engine each set their own tag.
IMAGE_TAG = os.environ.get("MIGRATOR_TEST_IMAGE_TAG", "test")
MIGRATOR_IMAGE = f"migrator:{IMAGE_TAG}"
EXAMPLE_IMAGE = f"migrator-example:{IMAGE_TAG}"  # the example application, built FROM the migrator
ACTION_IMAGE = f"migrator-action:{IMAGE_TAG}"
# Every character that breaks a naively built URL or an unescaped configparser value.
PASSWORD = "p@ss%w:rd/#?"
PASSWORD_FORMS = {PASSWORD, quote(PASSWORD, safe=""), quote_plus(PASSWORD), quote(PASSWORD)}
ROLE = "app_owner"
LOCK_KEY = int.from_bytes(b"migrator", "big")

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # the reaper image is not here
# The tests' own driver, to set up and look: psycopg2 where installed, else psycopg 3 (an
# install with that extra alone, scripts/ci/package.sh).
HELPER_DRIVER = "psycopg2" if importlib.util.find_spec("psycopg2") else "psycopg"


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


def start_postgres(port: int | None = None, dbname: str = "test") -> PostgresContainer:
    container = PostgresContainer(
        POSTGRES_IMAGE, password="admin-secret", dbname=dbname, driver=HELPER_DRIVER
    )
    if port is not None:
        container.with_bind_ports(5432, port)
    container.start()
    return container


@pytest.fixture(scope="session", autouse=True)
def no_recorded_effects() -> None:
    """`verify` records what it measured in the project's manifest: none is left in this
    checkout's projects from an earlier session, where a test would weigh what it recorded."""
    for manifest in [ROOT / "migrator-manifest.json", *PROJECTS.glob("*/migrator-manifest.json")]:
        manifest.unlink(missing_ok=True)


@dataclass
class Server:
    host: str
    port: int
    admin: sa.Engine  # superuser, for setting up and looking
    container_id: str


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    container = start_postgres()
    admin = sa.create_engine(container.get_connection_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'"))
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(5432))
    yield Server(host, port, admin, container.get_wrapped_container().id)
    admin.dispose()
    container.stop()


def docker_build(
    tag: str,
    context: Path,
    *build_args: str,
    target: str | None = None,
    dockerfile: str | None = None,
) -> None:
    arguments = [item for arg in build_args for item in ("--build-arg", arg)]
    arguments += ["--target", target] if target else []
    arguments += ["-f", str(context / dockerfile)] if dockerfile else []
    subprocess.run(
        ["docker", "build", "-q", "--network", "host", *arguments, "-t", tag, str(context)],
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="session")
def migrator_image() -> str:
    """The image, built from this checkout's Dockerfile."""
    docker_build(MIGRATOR_IMAGE, ROOT, f"PYTHON_IMAGE={PYTHON_IMAGE}")
    return MIGRATOR_IMAGE


@pytest.fixture(scope="session")
def example_image(migrator_image: str, server: Server) -> str:
    """The example application's image: the Dockerfile's `example` stage, FROM the migrator,
    built as a team's CI builds it: after `migrator verify`, whose measured effects the
    image's manifest carries."""
    env = {
        "DB_HOST": server.host,
        "DB_PORT": str(server.port),
        "DB_NAME": "postgres",
        "DB_USER": ROLE,
        "DB_PASSWORD": PASSWORD,
        "MIGRATOR_CONFIG": str(ROOT / "alembic.ini"),
    }
    verified = run_migrator("verify", env=env)
    assert verified.status == 0, verified.output
    docker_build(EXAMPLE_IMAGE, ROOT, f"PYTHON_IMAGE={PYTHON_IMAGE}", target="example")
    return EXAMPLE_IMAGE


@pytest.fixture(scope="session")
def action_image() -> str:
    """The GitHub action's image, built as GitHub builds it: action.Dockerfile, with the
    repository as the context (the migrator from this checkout's sources, no other image)."""
    docker_build(ACTION_IMAGE, ROOT, f"PYTHON_IMAGE={PYTHON_IMAGE}", dockerfile="action.Dockerfile")
    return ACTION_IMAGE


@dataclass
class Database:
    """A fresh database owned by ROLE, whose password is PASSWORD."""

    server: Server
    name: str
    # The driver a test of both drivers names in DATABASE_URL; None: DB_* alone, which run
    # on SQLAlchemy's default (psycopg 3 on 2.1).
    driver: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return self.env_with()

    def env_with(
        self, *, user: str = ROLE, password: str = PASSWORD, name: str | None = None
    ) -> dict[str, str]:
        """The environment naming this database, or another user, password or name on its
        server (in DATABASE_URL too, for a test of both drivers)."""
        name = name or self.name
        env = {
            "DB_HOST": self.server.host,
            "DB_PORT": str(self.server.port),
            "DB_NAME": name,
            "DB_USER": user,
            "DB_PASSWORD": password,
        }
        if self.driver is not None:  # DATABASE_URL wins over DB_*
            env["DATABASE_URL"] = (
                f"postgresql+{self.driver}://{quote(user, safe='')}:{quote(password, safe='')}"
                f"@{self.server.host}:{self.server.port}/{name}"
            )
        return env

    @property
    def url(self) -> str:
        password = quote(PASSWORD, safe="")
        return f"postgresql://{ROLE}:{password}@{self.server.host}:{self.server.port}/{self.name}"

    @property
    def psycopg2_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+psycopg2://", 1)

    def engine(self, **kwargs: Any) -> sa.Engine:
        # NullPool: closing a connection ends its session, and any advisory lock with it.
        url = self.url.replace("postgresql://", f"postgresql+{HELPER_DRIVER}://", 1)
        return sa.create_engine(url, poolclass=sa.NullPool, **kwargs)

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = self.engine()
        try:
            with engine.begin() as connection:
                result = connection.execute(sa.text(sql), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def revision(self) -> str | None:
        if not self.tables() >= {"alembic_version"}:
            return None
        rows = self.query("SELECT version_num FROM alembic_version")
        return ",".join(sorted(row[0] for row in rows)) or None

    def tables(self) -> set[str]:
        rows = self.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows}

    def advisory_locks(self) -> int:
        rows = self.query(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return int(rows[0][0])


# The drivers the core tests run the migrator on; scripts/ci/package.sh narrows this to what
# an install has.
DRIVERS = tuple(os.environ.get("MIGRATOR_TEST_DRIVERS", "psycopg psycopg2").split())


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module marked `both_drivers` runs each of its database tests on psycopg 3 and on
    psycopg2 (the driver named in DATABASE_URL)."""
    if metafunc.definition.get_closest_marker("both_drivers") and "driver" in metafunc.fixturenames:
        metafunc.parametrize("driver", DRIVERS)


@pytest.fixture
def driver() -> str | None:
    return None


@pytest.fixture
def database(server: Server, driver: str | None) -> Iterator[Database]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    with server.admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name} OWNER {ROLE}"))
    yield Database(server, name, driver)
    with server.admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))


def migrator_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a user's shell would have: nothing of ours but what a test sets."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DB_", "DATABASE_URL", "MIGRATOR_", "SAMPLE_"))
    }
    env["MIGRATOR_CONFIG"] = str(ROOT / "alembic.ini")
    env.update(extra or {})
    return env


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def assert_no_password(text: str) -> None:
    for form in PASSWORD_FORMS:
        assert form not in text, f"the password ({form!r}) appears in the output"


def finish(process: subprocess.Popen[str], started: float, timeout: float = 120) -> Result:
    stdout, stderr = process.communicate(timeout=timeout)
    result = Result(process.returncode, stdout, stderr, time.monotonic() - started)
    assert_no_password(result.output)
    return result


def start_migrator(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "migrator", *args],
        env=migrator_env(env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_migrator(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Result:
    """Run the CLI as a user does; fail the test if the password shows anywhere."""
    started = time.monotonic()
    return finish(start_migrator(*args, env=env), started, timeout)


def docker_env_flags(env: Mapping[str, str]) -> list[str]:
    """`-e KEY` for each variable: `docker run` takes the values from its own environment,
    so a secret never appears on a command line."""
    return [item for key in env for item in ("-e", key)]


def run_alembic(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Plain `alembic`, as the tutorial runs it."""
    environment = {"PATH": os.environ["PATH"], **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], fragment: str, timeout: float = 30) -> list[str]:
    """Read the process's stderr until a line contains `fragment`; returns the lines read."""
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        assert_no_password(line)
        if fragment in line:
            return lines
    process.send_signal(signal.SIGKILL)
    raise AssertionError(f"no line with {fragment!r} in:\n{''.join(lines)}")
