"""MIGRATOR_SCHEMA: `verify`, the safety report and `check` work in the tenant's schema, as
the run does, against a real PostgreSQL.

Each database holds three tenants of the same project: the one under test in its own schema
(a plain name, and one that only a quoted identifier can be: `Tenant-1`), a neighbour in
`tenant_other`, and one in `public`. The revisions are schema-agnostic, as a multi-tenant
team writes them (unqualified names; the search_path says where): the example project and
tests/projects/safety_probe. What is read-only on the real database leaves all of it as it
was; an upgrade changes only the tenant's schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECTS, ROOT, Database, Result, Server, run_migrator
from fingerprint import fingerprint
from test_safety import scratch_databases
from test_verify import BASE, make_tree

EXAMPLE = ROOT / "alembic.ini"
EXAMPLE_HEAD = "c3f9b7d21a58"
PROBE = PROJECTS / "safety_probe" / "alembic.ini"
SCHEMAS = ["tenant_a", "Tenant-1"]
NEIGHBOUR = "tenant_other"
ROWS = 1000
# Small thresholds: ROWS live rows are an error, without a slow insert of a million.
THRESHOLDS = {"MIGRATOR_SAFETY_WARN_ROWS": "10", "MIGRATOR_SAFETY_ERROR_ROWS": "100"}


@dataclass
class Tenant:
    """A tenant's schema in the test's database."""

    database: Database
    schema: str
    ini: Path

    @property
    def qualifier(self) -> str:
        """The schema as PostgreSQL writes it in a qualified name (quoted when it must be)."""
        return str(self.database.query("SELECT quote_ident(:name)", name=self.schema)[0][0])

    def env(self, ini: Path | None = None, **extra: str) -> dict[str, str]:
        return {
            **self.database.env,
            "MIGRATOR_CONFIG": str(ini or self.ini),
            "MIGRATOR_SCHEMA": self.schema,
            # Measured at deploy, in the tenant's schema of a scratch database (measured at
            # build and weighed in a schema: tests/test_safety_build.py).
            "MIGRATOR_SAFETY_MEASURE": "deploy",
            **extra,
        }

    def migrate(self, *args: str, **extra: str) -> Result:
        result = run_migrator(*args, env=self.env(MIGRATOR_SAFETY="off", **extra))
        assert result.status == 0, result.output
        return result

    def revision(self) -> str | None:
        rows = self.database.query(f"SELECT version_num FROM {self.qualifier}.alembic_version")
        return ",".join(sorted(row[0] for row in rows)) or None

    def fill(self, table: str, insert: str) -> None:
        """ROWS rows into the tenant's `table` (analyzed, so its live size is known)."""
        self.database.query(f"SET search_path TO {self.qualifier}; {insert}")
        self.database.query(f"ANALYZE {self.qualifier}.{table}")


CARS = (
    "INSERT INTO cars (id, make, model, colour) "
    f"SELECT g, 'make', 'model ' || g, 'red' FROM generate_series(1, {ROWS}) g"
)
ACCOUNTS = (
    "INSERT INTO accounts SELECT g, NULL, 'user' || g || '@example.com' "
    f"FROM generate_series(1, {ROWS}) g"
)


def tenant_of(database: Database, schema: str, ini: Path, neighbours_at: str) -> Tenant:
    """The tenant's schema, empty; the same project at `neighbours_at` in `public` and in
    NEIGHBOUR, each with a row of its own (the other tenants of the database)."""
    tenant = Tenant(database, schema, ini)
    database.query(f"CREATE SCHEMA {tenant.qualifier}; CREATE SCHEMA {NEIGHBOUR}")
    for neighbour in ("public", NEIGHBOUR):
        env = {**database.env, "MIGRATOR_CONFIG": str(ini), "MIGRATOR_SAFETY": "off"}
        if neighbour != "public":
            env["MIGRATOR_SCHEMA"] = neighbour
        result = run_migrator("upgrade", neighbours_at, env=env)
        assert result.status == 0, result.output
    return tenant


def outside(schema_of: Tenant, taken: dict[str, Any]) -> dict[str, Any]:
    """A fingerprint without what names the tenant's schema: the rest of the database."""
    names = (f"{schema_of.schema}.", f"{schema_of.qualifier}.")
    return {
        "catalog": [line for line in taken["catalog"] if not any(n in line for n in names)],
        "rows": {t: r for t, r in taken["rows"].items() if not t.startswith(names)},
    }


def findings(result: Result) -> dict[tuple[str, str], dict[str, Any]]:
    report = json.loads(result.stdout)["safety"]
    return {(f["revision"], f["rule"]): f for f in report["findings"]}


@pytest.mark.parametrize("schema", SCHEMAS)
def test_plan_safety_weighs_the_tenants_own_tables(
    server: Server, database: Database, schema: str
) -> None:
    tenant = tenant_of(database, schema, PROBE, neighbours_at="p1")  # their accounts: empty
    tenant.migrate("upgrade", "p1")
    tenant.fill("accounts", ACCOUNTS)
    before = fingerprint(database.engine())

    result = run_migrator(
        "plan", "upgrade", "head", "--safety", "--json", env=tenant.env(**THRESHOLDS)
    )
    text = run_migrator("plan", "upgrade", "head", "--safety", env=tenant.env(**THRESHOLDS))

    assert result.status == 0, result.output
    found = findings(result)
    accounts, owners = f"{tenant.qualifier}.accounts", f"{tenant.qualifier}.owners"
    assert {finding["table"] for finding in found.values()} == {accounts, owners}
    rewrite = found[("p2", "table-rewrite")]
    assert (rewrite["table"], rewrite["severity"], rewrite["rows"]) == (accounts, "error", ROWS)
    assert found[("p3", "index-without-concurrently")]["severity"] == "error"
    assert text.status == 0, text.output
    assert f"error   table-rewrite {accounts} (1,000 rows" in text.stdout
    assert "alembic_version" not in text.stdout  # the run's bookkeeping is no finding
    assert fingerprint(database.engine()) == before
    assert scratch_databases(server) == []


@pytest.mark.parametrize("schema", SCHEMAS)
def test_safety_block_lets_a_safe_upgrade_run_in_the_schema(
    database: Database, schema: str
) -> None:
    tenant = tenant_of(database, schema, EXAMPLE, neighbours_at="head")
    tenant.migrate("upgrade", "0d25ea6c8183")
    tenant.fill("cars", CARS)
    before = outside(tenant, fingerprint(database.engine()))

    result = run_migrator("upgrade", "head", env=tenant.env(MIGRATOR_SAFETY="block", **THRESHOLDS))

    assert result.status == 0, result.output
    assert tenant.revision() == EXAMPLE_HEAD
    # Weighed with the tenant's 1,000 cars (a column with a constant default: catalog only).
    assert f"safety: info    exclusive-lock {tenant.qualifier}.cars (1,000 rows" in result.stderr
    assert "alembic_version" not in result.stderr
    assert outside(tenant, fingerprint(database.engine())) == before


@pytest.mark.parametrize("schema", SCHEMAS)
def test_safety_block_stops_an_unsafe_upgrade_in_the_schema(
    server: Server, database: Database, schema: str
) -> None:
    tenant = tenant_of(database, schema, PROBE, neighbours_at="p1")
    tenant.migrate("upgrade", "p1")
    tenant.fill("accounts", ACCOUNTS)
    before = fingerprint(database.engine())

    result = run_migrator("upgrade", "p2", env=tenant.env(MIGRATOR_SAFETY="block", **THRESHOLDS))

    assert result.status == 8, result.output
    assert f"table-rewrite on {tenant.qualifier}.accounts in p2" in result.stderr
    assert tenant.revision() == "p1"
    assert fingerprint(database.engine()) == before  # nothing ran
    assert scratch_databases(server) == []


@pytest.mark.parametrize("schema", SCHEMAS)
def test_verify_climbs_the_stairway_in_the_schema(
    server: Server, database: Database, schema: str, tmp_path: Path
) -> None:
    tenant = tenant_of(database, schema, EXAMPLE, neighbours_at="head")
    broken = make_tree(
        tmp_path, [BASE, ("r2", "CREATE INDEX ix_t_colour ON t (colour)", "SELECT 1")], ""
    )
    before = fingerprint(database.engine())

    clean = run_migrator("verify", "--json", env=tenant.env())
    leaves_an_index = run_migrator("verify", env=tenant.env(broken))

    assert clean.status == 0, clean.output
    report = json.loads(clean.stdout)
    assert report["ok"] is True and report["models"] == []
    assert len(report["stairs"]) == 4
    # Measured in the tenant's schema of the scratch database, as the run would create them.
    assert report["stairs"][0]["effects"]["created"] == [f"{tenant.qualifier}.cars"]
    assert leaves_an_index.status == 5, leaves_an_index.output
    assert (
        "r2 (r2): the downgrade does not undo the upgrade: index ix_t_colour on t left behind"
        in (leaves_an_index.stdout)
    )
    assert fingerprint(database.engine()) == before
    assert scratch_databases(server) == []


@pytest.mark.parametrize("schema", SCHEMAS)
def test_check_compares_the_tenants_schema(database: Database, schema: str) -> None:
    tenant = tenant_of(database, schema, EXAMPLE, neighbours_at="base")  # public: empty
    behind = run_migrator("check", env=tenant.env())
    tenant.migrate("upgrade", "head")
    at_head = run_migrator("check", "--json", env=tenant.env())
    database.query(f"ALTER TABLE {tenant.qualifier}.cars ADD COLUMN extra int")
    before = fingerprint(database.engine())
    drifted = run_migrator("check", env=tenant.env())

    assert behind.status == 5, behind.output
    assert "the database is at base, not head: 4 revision(s) to apply" in behind.stdout
    assert at_head.status == 0, at_head.output
    assert json.loads(at_head.stdout)["models"] == []
    assert drifted.status == 5, drifted.output
    assert "models: column cars.extra is in the database but not in the models" in (drifted.stdout)
    assert fingerprint(database.engine()) == before


OWN_ENGINE = """\
import os
from alembic import context
from sqlalchemy import create_engine, pool

engine = create_engine(os.environ[{variable!r}], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
"""


@pytest.mark.parametrize(
    ("variable", "named"),
    [
        # A URL only the application knows: the real database, whatever the schema.
        ("APP_DATABASE_URL", "the project connected to database {database} on the server"),
        # The scratch database (its DATABASE_URL), but without the search_path.
        ("DATABASE_URL", "in schema public, not in schema {schema} (MIGRATOR_SCHEMA)"),
    ],
    ids=["another database", "another schema"],
)
def test_scratch_work_in_the_schema_still_reaches_only_the_scratch_schema(
    server: Server, database: Database, tmp_path: Path, variable: str, named: str
) -> None:
    tenant = tenant_of(database, "Tenant-1", EXAMPLE, neighbours_at="head")
    ini = make_tree(tmp_path, [BASE], "")
    (tmp_path / "alembic" / "env.py").write_text(OWN_ENGINE.format(variable=variable))
    env = tenant.env(ini, APP_DATABASE_URL=database.psycopg2_url, DATABASE_URL=database.url)
    del env["DB_HOST"], env["DB_PORT"], env["DB_NAME"], env["DB_USER"], env["DB_PASSWORD"]
    before = fingerprint(database.engine())

    verified = run_migrator("verify", env=env)
    upgraded = run_migrator("upgrade", "head", env={**env, "MIGRATOR_SAFETY": "block"})
    # No scratch work: the real run's own check of env.py's connection stops it.
    unmeasured = run_migrator("upgrade", "head", env={**env, "MIGRATOR_SAFETY": "off"})

    assert verified.status == 2, verified.output
    assert "scratch work stopped: the project connected to " in verified.stderr
    assert named.format(database=database.name, schema="Tenant-1") in verified.stderr
    assert upgraded.status == 2, upgraded.output  # the gate stops it before the run would
    assert unmeasured.status == 2, unmeasured.output
    assert (
        "env.py's connection is in schema public, not Tenant-1, but the migration lock is "
        f"held on database {database.name} on the server of"
    ) in unmeasured.stderr
    assert fingerprint(database.engine()) == before
    assert scratch_databases(server) == []
