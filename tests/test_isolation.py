"""Scratch work never touches the real database, whatever env.py does.

The project is the tutorial's own (tests/tutorial.py builds it as the tutorial does: alembic
init, its env.py lines, autogenerate), and variants of it whose env.py finds its database
the other ways real projects do. The real database is at the first revision with 1,000 rows;
one revision is pending. After `verify`, `plan --safety` and a refused upgrade its catalog
(every relation and its file, column, constraint, index) and its rows are exactly as before;
an upgrade changes only what the pending revision does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
import tutorial
from conftest import Result, Server, finish, migrator_env
from fingerprint import fingerprint
from test_safety import scratch_databases

ROLE = "tutorial_owner"
# The tutorial puts the password in its URL unquoted: one that needs no quoting.
SECRET = "Tut0rial-secret-42"
ROWS = 1000
SHAPES = ["tutorial", "database_url", "module_engine"]


@pytest.fixture(scope="module")
def projects(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    with server.admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{SECRET}'"))
    with _new_database(server) as name:
        return tutorial.build(tmp_path_factory.mktemp("projects"), _env(server, name))


@pytest.fixture
def real(server: Server, projects: dict[str, Path]) -> Iterator[str]:
    """The real database: at the tutorial's first revision, `cars` holding ROWS rows."""
    with _new_database(server) as name:
        first = tutorial.revisions(projects["tutorial"])[0]
        tutorial.plain_alembic(projects["tutorial"], _env(server, name), "upgrade", first)
        _query(
            server,
            name,
            "INSERT INTO cars (make, model, colour) "
            f"SELECT 'make', 'model ' || g, 'red' FROM generate_series(1, {ROWS}) g",
        )
        _query(server, name, "ANALYZE cars")
        yield name


def test_the_tutorials_project_is_built_as_the_tutorial_writes_it(
    projects: dict[str, Path],
) -> None:
    env_py = (projects["tutorial"].parent / "alembic" / "env.py").read_text()
    assert 'config.set_main_option("sqlalchemy.url", SQLALCHEMY_DATABASE_URL)' in env_py
    assert "connectable = engine_from_config(" in env_py
    db_py = (projects["tutorial"].parent / "persistence" / "db.py").read_text()
    assert 'SQLALCHEMY_DATABASE_URL = f"postgresql://{DB_USER}' in db_py


@pytest.mark.parametrize("shape", SHAPES)
def test_verify_and_plan_safety_leave_the_real_database_as_it_was(
    server: Server, projects: dict[str, Path], real: str, shape: str
) -> None:
    before = _fingerprint(server, real)
    verified = _migrator(projects[shape], _env(server, real, shape), "verify")
    assert verified.status == 0, verified.output
    assert "verified: 2 revision(s) up, down and up again; models match" in verified.stdout
    assert _fingerprint(server, real) == before
    # Weighed from what verify recorded; then measured again at deploy, on a scratch database.
    for measure in ("build", "deploy"):
        env = _env(server, real, shape, MIGRATOR_SAFETY_MEASURE=measure)
        planned = _migrator(projects[shape], env, "plan", "--safety", "upgrade", "head")
        assert planned.status == 0, planned.output
        assert "index-without-concurrently public.cars" in planned.stdout, planned.stdout
        assert ("scratch database" in planned.stderr) == (measure == "deploy")
        assert _fingerprint(server, real) == before
    assert scratch_databases(server) == []


@pytest.mark.parametrize("shape", SHAPES)
def test_an_upgrade_refused_by_the_safety_gate_changes_nothing(
    server: Server, projects: dict[str, Path], real: str, shape: str
) -> None:
    before = _fingerprint(server, real)
    env = _env(
        server,
        real,
        shape,
        MIGRATOR_SAFETY="block",
        MIGRATOR_SAFETY_ERROR_ROWS="500",
        MIGRATOR_SAFETY_MEASURE="deploy",
    )
    result = _migrator(projects[shape], env, "upgrade", "head")
    assert result.status == 8, result.output
    first = tutorial.revisions(projects[shape])[0]
    assert f"summary command=upgrade from={first} " in result.stderr
    assert " applied=0 " in result.stderr
    assert _fingerprint(server, real) == before


@pytest.mark.parametrize("shape", SHAPES)
def test_an_upgrade_applies_the_pending_revision_once_and_says_so(
    server: Server, projects: dict[str, Path], real: str, shape: str
) -> None:
    before = _fingerprint(server, real)
    result = _migrator(projects[shape], _env(server, real, shape), "upgrade", "head")
    assert result.status == 0, result.output
    first, second = tutorial.revisions(projects[shape])
    assert f"summary command=upgrade from={first} to={second} applied=1" in result.stderr
    assert _query(server, real, "SELECT version_num FROM alembic_version") == [(second,)]
    assert _query(server, real, "SELECT year, count(*) FROM cars GROUP BY year") == [(2000, ROWS)]
    after = _fingerprint(server, real)
    # Only what the revision does: a column and its index; every relation keeps its file.
    before_catalog, after_catalog = set(before["catalog"]), set(after["catalog"])  # type: ignore[call-overload]
    assert before_catalog - after_catalog == set()
    # The migrator's deploy ledger, created by its first run beside the version table.
    added = {line for line in after_catalog - before_catalog if "migrator_ledger" not in line}
    assert any(line.startswith("relation public.migrator_ledger ") for line in after_catalog)
    (index_relation,) = {line for line in added if line.startswith("relation ")}
    assert index_relation.startswith("relation public.ix_cars_year kind i file ")
    assert added - {index_relation} == {
        "column cars.year integer not null f",
        "column ix_cars_year.year integer not null f",
        "index CREATE INDEX ix_cars_year ON public.cars USING btree (year)",
    }
    assert scratch_databases(server) == []


def test_env_py_with_a_url_only_the_application_knows_stops_scratch_work(
    server: Server, projects: dict[str, Path], real: str
) -> None:
    """The migrator cannot point APP_DATABASE_URL at the scratch database: the guard sees
    the connection reach the real one and stops before its first statement."""
    env = _env(
        server,
        real,
        "app_url",
        APP_DATABASE_URL=_url(server, real),
        MIGRATOR_SAFETY_MEASURE="deploy",
    )
    before = _fingerprint(server, real)
    for args in (["verify"], ["plan", "--safety", "upgrade", "head"]):
        result = _migrator(projects["app_url"], env, *args)
        assert result.status == 2, result.output
        assert f"the project connected to database {real}" in result.stderr
        assert "not to the scratch database migrator_scratch_" in result.stderr
        assert "Traceback" not in result.output
        assert _fingerprint(server, real) == before
    blocked = _migrator(projects["app_url"], {**env, "MIGRATOR_SAFETY": "block"}, "upgrade", "head")
    assert blocked.status == 2, blocked.output
    assert _fingerprint(server, real) == before
    # Under the default (warn) the measurement is skipped with a warning, and the real run,
    # whose env.py reaches the database the lock is held on, goes ahead.
    upgraded = _migrator(projects["app_url"], env, "upgrade", "head")
    assert upgraded.status == 0, upgraded.output
    assert "safety report skipped (MIGRATOR_SAFETY=warn): scratch work stopped" in upgraded.stderr
    assert _query(server, real, "SELECT version_num FROM alembic_version") == [
        (tutorial.revisions(projects["app_url"])[1],)
    ]
    assert scratch_databases(server) == []


def test_a_raw_driver_connection_made_at_import_is_refused_in_scratch_work(
    server: Server, projects: dict[str, Path], real: str
) -> None:
    """psycopg2.connect straight to the real database, writing a table, when env.py is
    imported: in the scratch process the connection is closed before that statement."""
    dsn = f"host={server.host} port={server.port} dbname={real} user={ROLE} password={SECRET}"
    env = _env(server, real, "raw_driver", APP_DSN=dsn)
    before = _fingerprint(server, real)
    result = _migrator(projects["raw_driver"], env, "verify")
    assert result.status == 2, result.output
    assert f"the project connected to database {real}" in result.stderr
    assert _fingerprint(server, real) == before  # no escaped_marker table
    assert scratch_databases(server) == []


def test_a_real_run_whose_env_py_reaches_another_database_is_refused(
    server: Server, projects: dict[str, Path], real: str
) -> None:
    with _new_database(server) as other:
        env = _env(server, real, "app_url", APP_DATABASE_URL=_url(server, other))
        before, other_before = _fingerprint(server, real), _fingerprint(server, other)
        for args in (["upgrade", "head"], ["current"]):
            result = _migrator(projects["app_url"], {**env, "MIGRATOR_SAFETY": "off"}, *args)
            assert result.status == 2, result.output
            assert f"env.py connected to database {other}" in result.stderr
            assert f"the migration lock is held on database {real}" in result.stderr
        assert _fingerprint(server, real) == before
        assert _fingerprint(server, other) == other_before  # not even a version table


def test_env_py_that_calls_sys_exit_is_exit_2_with_a_summary(
    server: Server, projects: dict[str, Path], real: str, tmp_path: Path
) -> None:
    project = tmp_path / "exits"
    shutil.copytree(projects["tutorial"].parent, project)
    env_py = project / "alembic" / "env.py"
    env_py.write_text(env_py.read_text() + "\nimport sys\nsys.exit(0)\n")
    before = _fingerprint(server, real)
    env = _env(server, real, "tutorial", MIGRATOR_SAFETY="off")
    result = _migrator(project / "alembic.ini", env, "upgrade", "head")
    assert result.status == 2, result.output
    assert "env.py (or a revision it ran) called sys.exit(0)" in result.stderr
    assert "summary command=upgrade" in result.stderr and "status=usage" in result.stderr
    assert _fingerprint(server, real) == before


# --- helpers ---------------------------------------------------------------------------


def _url(server: Server, name: str) -> str:
    return f"postgresql://{ROLE}:{SECRET}@{server.host}:{server.port}/{name}"


def _env(server: Server, name: str, shape: str = "tutorial", **extra: str) -> dict[str, str]:
    """What the user sets: the tutorial's DB_*; DATABASE_URL too for the env.py shapes that
    read it (a psycopg 3 URL, as SQLAlchemy 2.1 reads postgresql://)."""
    env = {
        "PATH": os.environ["PATH"],
        "DB_USER": ROLE,
        "DB_PASSWORD": SECRET,
        "DB_HOST": server.host,
        "DB_PORT": str(server.port),
        "DB_NAME": name,
    }
    if shape != "tutorial":
        env["DATABASE_URL"] = _url(server, name)
    return {**env, **extra}


def _migrator(alembic_ini: Path, env: dict[str, str], *args: str) -> Result:
    """The migrator run in the project's directory, as its user runs it."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "migrator", *args],
        env=migrator_env({**env, "MIGRATOR_CONFIG": str(alembic_ini)}),
        cwd=alembic_ini.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    result = finish(process, started)
    assert SECRET not in result.output, "the password appears in the output"
    return result


@contextmanager
def _new_database(server: Server) -> Iterator[str]:
    """A new database owned by the tutorial's role, dropped afterwards."""
    name = f"tut_{uuid.uuid4().hex[:12]}"
    with server.admin.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name} OWNER {ROLE}"))
    try:
        yield name
    finally:
        with server.admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))


def _engine(server: Server, name: str) -> sa.Engine:
    url = sa.make_url(_url(server, name)).set(drivername="postgresql+psycopg2")
    return sa.create_engine(url, poolclass=sa.NullPool)


def _fingerprint(server: Server, name: str) -> dict[str, object]:
    engine = _engine(server, name)
    try:
        return fingerprint(engine)
    finally:
        engine.dispose()


def _query(server: Server, name: str, sql: str) -> list[tuple[object, ...]]:
    engine = _engine(server, name)
    try:
        with engine.begin() as connection:
            result = connection.execute(sa.text(sql))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


# An env.py that, the second time it runs in one process (the run's upgrade, after the
# look at the database), moves the database to head behind the run's back.
MOVES_THE_DATABASE = """\
import builtins
import os
import psycopg2
builtins.env_py_runs = getattr(builtins, "env_py_runs", 0) + 1
if builtins.env_py_runs == 2:
    _behind = psycopg2.connect(os.environ["APP_DSN"])
    _behind.cursor().execute("UPDATE alembic_version SET version_num = %s", (os.environ["HEAD"],))
    _behind.commit()
    _behind.close()
"""


def test_a_database_moved_behind_the_runs_back_is_a_failure_naming_it(
    server: Server, projects: dict[str, Path], real: str, tmp_path: Path
) -> None:
    """The run reads where the database is under the lock; when env.py then finds it
    elsewhere, it says so and runs nothing, instead of "nothing to do"."""
    project = tmp_path / "moves"
    shutil.copytree(projects["tutorial"].parent, project)
    env_py = project / "alembic" / "env.py"
    env_py.write_text(MOVES_THE_DATABASE + env_py.read_text())
    first, second = tutorial.revisions(projects["tutorial"])
    dsn = f"host={server.host} port={server.port} dbname={real} user={ROLE} password={SECRET}"
    env = _env(server, real, "tutorial", MIGRATOR_SAFETY="off", APP_DSN=dsn, HEAD=second)
    result = _migrator(project / "alembic.ini", env, "upgrade", "head")
    assert result.status == 1, result.output
    assert (
        f"the database is at {second}, but this run, holding the migration lock, left it at {first}"
        in result.stderr
    )
    assert "nothing to do" not in result.stderr
    assert f"summary command=upgrade from={first} to={second} applied=0" in result.stderr
    assert _query(
        server, real, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'year'"
    ) == [(0,)]


def test_a_role_without_createdb_verifies_in_the_given_database_never_the_real_one(
    server: Server, projects: dict[str, Path], real: str
) -> None:
    """Managed databases rarely grant CREATEDB: verify then says so (exit 6), runs in the
    MIGRATOR_VERIFY_URL database it is given, and refuses one that is the real database."""
    with server.admin.connect() as connection:
        connection.execute(sa.text(f"ALTER ROLE {ROLE} NOCREATEDB"))
    try:
        with _new_database(server) as given:
            before = _fingerprint(server, real)
            refused = _migrator(projects["tutorial"], _env(server, real), "verify")
            assert refused.status == 6, refused.output
            assert "permission denied to create database" in refused.stderr
            for verify_url, status in ((_url(server, given), 0), (_url(server, real), 2)):
                env = _env(server, real, MIGRATOR_VERIFY_URL=verify_url)
                result = _migrator(projects["tutorial"], env, "verify")
                assert result.status == status, result.output
                assert _fingerprint(server, real) == before
            assert f"MIGRATOR_VERIFY_URL names {real}, the database being migrated" in result.stderr
            second = tutorial.revisions(projects["tutorial"])[1]
            assert _query(server, given, "SELECT version_num FROM alembic_version") == [(second,)]
    finally:
        with server.admin.connect() as connection:
            connection.execute(sa.text(f"ALTER ROLE {ROLE} CREATEDB"))
