"""A public project's own migration tree, run as its users run it, on databases holding rows.

DBOS Transact (`dbos` on PyPI, a test dependency pinned to 1.12.0: the last release whose
system database is migrated by Alembic) ships its Alembic tree inside the installed
package: `dbos/_migrations`, an `env.py` that makes its own engine from `sqlalchemy.url`
(it ignores `config.attributes["connection"]`), and 14 revisions that create the `dbos`
schema, the `uuid-ossp` extension, tables, triggers, a view, and alter them since. None of
it is copied here: the test writes an `alembic.ini` of its own whose `script_location` is
the installed package's directory, as a user would, and runs the migrator on it.

What it proves, on that third-party `env.py` and tree:

- `upgrade` reaches head (and an earlier revision) with the project's `env.py` unchanged;
- `verify` climbs its stairway on a scratch database and finds what DBOS's own first
  downgrade leaves behind (its `dbos` schema and the `uuid-ossp` extension): exit 5,
  naming both;
- `plan --safety upgrade head` exits 0, on a database at head and on one five revisions
  behind whose tables hold rows, where it weighs the pending revisions with them;
- none of them touches the real database: its catalog (every relation with its relkind
  and relfilenode, every column with its type and nullability, every constraint and index
  definition, in every non-system schema) and an md5 of every table's rows are the same
  before and after, and no `migrator_verify_*` scratch database is left on the server.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from conftest import Database, Server, run_migrator
from fingerprint import fingerprint
from test_safety import scratch_databases

HEAD = "01ce9f07bd10"  # streaming
EARLIER = "83f3732ae8e7"  # workflow_timeout: five revisions below head
WORKFLOWS = 12_000  # above MIGRATOR_SAFETY_WARN_ROWS (10,000), so the safety report warns

# Rows a DBOS application leaves behind: finished workflows, the queue entries of some,
# and two recorded steps each. Only columns that exist both at EARLIER and at head.
ROWS = [
    f"""
    INSERT INTO dbos.workflow_status
        (workflow_uuid, status, name, queue_name, created_at, updated_at)
    SELECT 'wf-' || n, CASE WHEN n % 10 = 0 THEN 'ERROR' ELSE 'SUCCESS' END,
           'nightly_report', 'reports', 1700000000000 + n, 1700000000000 + n
    FROM generate_series(1, {WORKFLOWS}) AS n
    """,
    f"""
    INSERT INTO dbos.workflow_queue (workflow_uuid, queue_name, created_at_epoch_ms)
    SELECT 'wf-' || n, 'reports', 1700000000000 + n
    FROM generate_series(1, {WORKFLOWS}, 4) AS n
    """,
    f"""
    INSERT INTO dbos.operation_outputs (workflow_uuid, function_id, output, function_name)
    SELECT 'wf-' || n, step, 'done', 'step_' || step
    FROM generate_series(1, {WORKFLOWS}) AS n, generate_series(1, 2) AS step
    """,
]


def dbos_migrations() -> Path:
    """The tree inside the installed package, found from its `__file__` (what find_spec's
    origin is) without importing it: importing DBOS pulls in FastAPI and OpenTelemetry."""
    spec = importlib.util.find_spec("dbos")
    if spec is None or spec.origin is None:
        pytest.fail("dbos is not installed: it is a test dependency (pip install -e '.[test]')")
    tree = Path(spec.origin).parent / "_migrations"
    assert (tree / "env.py").is_file(), f"{tree}: no env.py (dbos other than 1.12.0?)"
    return tree


@pytest.fixture
def env(tmp_path: Path, database: Database) -> dict[str, str]:
    """What a user of DBOS sets: an alembic.ini of their own, and the database's URL."""
    ini = tmp_path / "alembic.ini"
    location = str(dbos_migrations()).replace("%", "%%")  # configparser interpolation
    ini.write_text(f"[alembic]\nscript_location = {location}\n")
    return {"DATABASE_URL": database.url, "MIGRATOR_CONFIG": str(ini)}


def snapshot(database: Database) -> dict[str, Any]:
    engine = database.engine()
    try:
        return fingerprint(engine)
    finally:
        engine.dispose()


def migrate_and_fill(database: Database, env: dict[str, str], target: str) -> dict[str, Any]:
    """Migrate the database to `target`, write the rows, and return its snapshot."""
    upgrade = run_migrator("upgrade", target, env=env)
    assert upgrade.status == 0, upgrade.output
    assert database.revision() == target
    for statement in ROWS:
        database.query(statement)
    before = snapshot(database)
    assert before["rows"]["dbos.workflow_status"][0] == WORKFLOWS
    assert before["rows"]["dbos.operation_outputs"][0] == 2 * WORKFLOWS
    return before


def test_verify_and_plan_leave_a_database_at_head_untouched(
    server: Server, database: Database, env: dict[str, str]
) -> None:
    before = migrate_and_fill(database, env, HEAD)

    verify = run_migrator("verify", env=env)
    # DBOS's first downgrade drops its tables but leaves the schema and the extension its
    # upgrade created: verify names that (exit 5), having run on the scratch database only.
    assert verify.status == 5, verify.output
    assert (
        "5c361fc04708 (Add system tables.): the downgrade does not undo the upgrade: "
        "extension uuid-ossp left behind; schema dbos left behind"
    ) in verify.stdout

    plan = run_migrator("plan", "--safety", "upgrade", "head", env=env)
    assert plan.status == 0, plan.output
    assert f"upgrade from {HEAD} to {HEAD} (head): 0 revision(s)" in plan.stdout

    assert snapshot(database) == before
    assert scratch_databases(server) == []


def test_plan_weighs_pending_revisions_on_a_database_with_rows_and_leaves_it_untouched(
    server: Server, database: Database, env: dict[str, str]
) -> None:
    before = migrate_and_fill(database, env, EARLIER)

    measured = {**env, "MIGRATOR_SAFETY_MEASURE": "deploy"}
    plan = run_migrator("plan", "--safety", "upgrade", "head", env=measured)
    assert plan.status == 0, plan.output
    assert f"upgrade from {EARLIER} to {HEAD} (head): 5 revision(s)" in plan.stdout
    assert f"5. {HEAD}  streaming" in plan.stdout
    # Measured on a scratch database, weighed with this database's rows: consolidate_queues
    # builds two indexes on workflow_status inside its transaction.
    assert f"dbos.workflow_status ({WORKFLOWS:,} rows" in plan.stdout
    assert "warning index-without-concurrently dbos.workflow_status" in plan.stdout

    assert snapshot(database) == before
    assert database.revision() == EARLIER
    assert scratch_databases(server) == []
