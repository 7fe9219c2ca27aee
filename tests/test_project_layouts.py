"""Project layouts Alembic reads, and the manifest must cover as Alembic reads them: a
symlinked versions directory, a sourceless project (revisions shipped as bytecode), and a
project file the migrator's user cannot read (exit 6 naming it, with or without a manifest).
"""

from __future__ import annotations

import importlib.util
import py_compile
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    PROJECTS,
    ROOT,
    Database,
    Result,
    finish,
    migrator_env,
    run_alembic,
    run_migrator,
)
from fingerprint import fingerprint

from migrator.project_files import files_under

HEAD, ADDED = "a3a3a3a3a3a3", "a4a4a4a4a4a4"
ANSWERED = "answered by the manifest"
ADDED_REVISION = (
    '"""added after the manifest"""\n\nfrom alembic import op\n\n'
    f'revision = "{ADDED}"\ndown_revision = "{HEAD}"\n\n\n'
    f"def upgrade() -> None:\n    op.execute(\"INSERT INTO applied VALUES ('{ADDED}')\")\n"
)
# The migrator's user in these tests: tests run as root, whom no file mode stops.
UNPRIVILEGED = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def copy_of_audited(directory: Path) -> Path:
    """The audited test project (each revision records itself in `applied`); its alembic.ini."""
    shutil.copytree(PROJECTS / "audited", directory)
    return directory / "alembic.ini"


def write_manifest(ini: Path) -> None:
    written = run_migrator("manifest", env={"MIGRATOR_CONFIG": str(ini)})
    assert written.status == 0, written.output


def upgrade(database: Database, ini: Path) -> Result:
    env = {**database.env, "MIGRATOR_CONFIG": str(ini), "MIGRATOR_LOG_LEVEL": "DEBUG"}
    return run_migrator("upgrade", "head", env=env)


def applied(database: Database) -> list[str]:
    return [row[0] for row in database.query("SELECT revision FROM applied ORDER BY at")]


def assert_added_revision_applied(result: Result, database: Database) -> None:
    assert result.status == 0, result.output
    assert ANSWERED not in result.stderr
    assert database.revision() == ADDED
    assert applied(database)[-1] == ADDED


def test_a_revision_added_to_a_symlinked_versions_directory_is_applied(
    database: Database, tmp_path: Path
) -> None:
    ini = copy_of_audited(tmp_path / "project")
    versions = ini.parent / "alembic" / "versions"
    shared = tmp_path / "shared-versions"  # e.g. a volume, or a directory shared by services
    versions.rename(shared)
    versions.symlink_to(shared, target_is_directory=True)
    assert upgrade(database, ini).status == 0
    write_manifest(ini)
    assert ANSWERED in upgrade(database, ini).stderr  # the manifest holds while nothing changed

    (shared / "a4_added.py").write_text(ADDED_REVISION)
    assert_added_revision_applied(upgrade(database, ini), database)


def test_a_symlink_loop_in_the_versions_directory_is_walked_once(
    database: Database, tmp_path: Path
) -> None:
    ini = copy_of_audited(tmp_path / "project")
    versions = ini.parent / "alembic" / "versions"
    (versions / "again").symlink_to(versions, target_is_directory=True)
    assert upgrade(database, ini).status == 0
    write_manifest(ini)

    assert ANSWERED in upgrade(database, ini).stderr
    (versions / "a4_added.py").write_text(ADDED_REVISION)
    assert_added_revision_applied(upgrade(database, ini), database)


def test_a_revision_added_to_another_version_location_is_applied(
    database: Database, tmp_path: Path
) -> None:
    ini = copy_of_audited(tmp_path / "project")
    extra = tmp_path / "project" / "more-versions"
    extra.mkdir()
    locations = "%(here)s/alembic/versions %(here)s/more-versions"
    ini.write_text(ini.read_text().replace("path_separator = os", "path_separator = space"))
    ini.write_text(ini.read_text() + f"version_locations = {locations}\n")
    assert upgrade(database, ini).status == 0
    write_manifest(ini)
    assert ANSWERED in upgrade(database, ini).stderr

    (extra / "a4_added.py").write_text(ADDED_REVISION)
    assert_added_revision_applied(upgrade(database, ini), database)


def test_the_hash_walks_what_alembic_may_load_and_not_what_python_writes(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    (versions / "__pycache__").mkdir(parents=True)
    for name in ("a1.py", "a2.pyc", "__pycache__/a1.cpython-311.pyc", "__pycache__/a3.pyc"):
        (versions / name).write_text(name)
    (versions / "loop").symlink_to(versions, target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a4.py").write_text("a4")
    (versions / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)

    found = [str(path.relative_to(versions)) for path in files_under(versions)]

    assert found == ["a1.py", "a2.pyc", "__pycache__/a3.pyc", "linked/a4.py"]
    assert list(files_under(tmp_path / "missing")) == []


def compile_away(source: Path, layout: str) -> None:
    """Ship `source` as bytecode only, where Alembic's `sourceless` finds it: beside it
    (`legacy`, as `compileall -b` leaves it) or in `__pycache__` (PEP 3147)."""
    target = (
        source.with_suffix(".pyc")
        if layout == "legacy"
        else Path(importlib.util.cache_from_source(str(source)))
    )
    py_compile.compile(str(source), cfile=str(target), doraise=True)
    source.unlink()


@pytest.mark.parametrize("layout", ["legacy", "__pycache__"])
def test_a_revision_added_as_bytecode_to_a_sourceless_project_is_applied(
    database: Database, tmp_path: Path, layout: str
) -> None:
    ini = copy_of_audited(tmp_path / "project")
    ini.write_text(ini.read_text() + "sourceless = true\n")  # the last section is [alembic]
    versions = ini.parent / "alembic" / "versions"
    for source in versions.glob("*.py"):
        compile_away(source, layout)
    assert upgrade(database, ini).status == 0
    assert database.revision() == HEAD  # the bytecode revisions ran
    write_manifest(ini)
    assert ANSWERED in upgrade(database, ini).stderr

    (versions / "a4_added.py").write_text(ADDED_REVISION)
    compile_away(versions / "a4_added.py", layout)
    assert_added_revision_applied(upgrade(database, ini), database)


@pytest.fixture
def shared_directory() -> Iterator[Path]:
    """A directory the unprivileged user may enter (pytest's own tmp_path is root's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="migrator-layouts-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory)


def upgrade_unprivileged(database: Database, ini: Path) -> Result:
    env = {**database.env, "MIGRATOR_CONFIG": str(ini)}
    started = time.monotonic()
    process = subprocess.Popen(
        [*UNPRIVILEGED, sys.executable, "-m", "migrator", "upgrade", "head"],
        env=migrator_env(env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return finish(process, started)


def readable_unprivileged(path: Path) -> bool:
    return subprocess.run([*UNPRIVILEGED, "test", "-r", str(path)], check=False).returncode == 0


@pytest.mark.parametrize(
    "unreadable",
    ["alembic/versions", "alembic.ini", "alembic/env.py", "alembic/versions/a2_slow.py"],
)
@pytest.mark.parametrize("migrated", [False, True], ids=["empty database", "migrated database"])
def test_a_project_file_the_user_cannot_read_is_exit_6_naming_it(
    database: Database, shared_directory: Path, unreadable: str, migrated: bool
) -> None:
    ini = copy_of_audited(shared_directory / "project")
    if migrated:
        assert upgrade(database, ini).status == 0
    write_manifest(ini)
    assert readable_unprivileged(ini) and readable_unprivileged(ini.parent / "alembic/env.py")
    before = fingerprint(database.engine())
    path = ini.parent / unreadable
    path.chmod(0)
    assert not readable_unprivileged(path)

    with_manifest = upgrade_unprivileged(database, ini)
    (ini.parent / "migrator-manifest.json").unlink()
    without_manifest = upgrade_unprivileged(database, ini)

    for result in (with_manifest, without_manifest):
        assert result.status == 6, result.output
        errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and f"{path}: permission denied" in errors[0], result.stderr
        assert "Traceback" not in result.output
        assert "at base" not in result.output and "unknown" not in result.output
        assert fingerprint(database.engine()) == before


def test_a_version_table_renamed_in_a_module_env_py_imports_is_not_answered_from_the_manifest(
    database: Database, tmp_path: Path
) -> None:
    """`alembic init`'s env.py, told its version table by the project's settings module (as
    a team names one per service): an edit there moves the version table, which the
    manifest's hash must see, or the fast path would read the old table and answer at head."""
    project = tmp_path / "project"
    project.mkdir()
    initialised = run_alembic("init", "alembic", cwd=project)
    assert initialised.returncode == 0, initialised.stderr
    env_py = project / "alembic" / "env.py"
    text = env_py.read_text()
    assert text.count("target_metadata=target_metadata") == 2  # offline and online
    env_py.write_text(
        "import app_settings\n"
        + text.replace(
            "target_metadata=target_metadata",
            "target_metadata=target_metadata, version_table=app_settings.VERSION_TABLE",
        )
    )
    settings = project / "app_settings.py"  # beside alembic.ini: prepend_sys_path = .
    settings.write_text('VERSION_TABLE = "orders_versions"\n')
    shutil.rmtree(project / "alembic" / "versions")
    shutil.copytree(PROJECTS / "audited" / "alembic" / "versions", project / "alembic" / "versions")
    ini = project / "alembic.ini"
    url_env = {**database.env, "DATABASE_URL": database.url}  # env.py reads sqlalchemy.url
    first = run_migrator("upgrade", "head", env={**url_env, "MIGRATOR_CONFIG": str(ini)})
    assert first.status == 0, first.output
    write_manifest(ini)
    assert ANSWERED in upgrade(database, ini).stderr  # the manifest holds while nothing changed

    settings.write_text('VERSION_TABLE = "billing_versions"\n')
    moved = upgrade(database, ini)

    # The full run decided, as Alembic would: the new table is empty, so the database is at
    # base to it, and the first revision fails on the table it already made (rolled back).
    assert moved.status == 1, moved.output
    assert ANSWERED not in moved.stderr
    assert "fast path: no usable manifest (the project's files changed" in moved.stderr
    assert 'relation "applied" already exists' in moved.stderr
    rows = database.query("SELECT version_num FROM orders_versions")
    assert [row[0] for row in rows] == [HEAD]
