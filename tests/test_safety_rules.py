"""The safety report beside the PostgreSQL migration linter squawk, change by change.

tests/projects/risky_changes holds one revision per risky change, at least one for each rule
squawk documents that applies to an Alembic revision (its rules about transactions a tool
manages, `BEGIN` and `COMMIT` in the file, `DROP DATABASE` and the opt-in ones do not). The
tables are filled first, so sizes matter. Each change is run through both: the migrator
measures it on a scratch database (`plan --safety`, measured at deploy; and recorded by
`manifest --measure`, then weighed at deploy), squawk reads its SQL. CHANGES holds, per
change, what each of them is expected to say, so the table is the comparison.

squawk's `require-lock-timeout` and `require-statement-timeout` ask every file for its own
`SET`; the migrator sets both for every revision (MIGRATOR_DDL_LOCK_TIMEOUT,
MIGRATOR_STATEMENT_TIMEOUT), so they are left out of its verdicts here.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import PROJECTS, Database, run_migrator

from migrator.safety import Effects, weigh

PROJECT = PROJECTS / "risky_changes"
SQUAWK = Path(sys.executable).with_name("squawk")  # squawk-cli, in the test extra
ACCOUNTS = 300_000  # past MIGRATOR_SAFETY_ERROR_ROWS (100,000)
SMALLER = 50_000  # events, archive, measurements: past the warning line (10,000)
FEW = 1_000  # owners, tags: under it
LAST_MEASURED = "r36"  # r37 fails on the scratch database, as it would on the real one


@dataclass(frozen=True)
class Change:
    revision: str
    squawk: set[str]  # the rules squawk reports on the revision's SQL
    migrator: dict[tuple[str, str], str]  # (rule, table without "public."): severity
    in_transaction: bool = True  # how Alembic runs it: squawk reads it as BEGIN; SQL; COMMIT


CHANGES = [
    Change("r01", {"adding-field-with-default"}, {("table-rewrite", "accounts"): "error"}),
    Change(
        "r02",
        {"adding-foreign-key-constraint", "constraint-missing-not-valid"},
        {("validated-constraint", "accounts"): "error", ("exclusive-lock", "owners"): "info"},
    ),
    Change(
        "r03", {"constraint-missing-not-valid"}, {("validated-constraint", "accounts"): "error"}
    ),
    Change("r04", set(), {("exclusive-lock", "accounts"): "info"}),  # NOT VALID: no scan
    # VALIDATE CONSTRAINT: SHARE UPDATE EXCLUSIVE, reads and writes go on; never an error.
    Change("r05", set(), {("validate-constraint", "accounts"): "info"}),
    Change("r06", {"adding-not-nullable-field"}, {("set-not-null", "accounts"): "error"}),
    # r05's validated CHECK (email IS NOT NULL) spares SET NOT NULL its scan.
    Change("r07", {"adding-not-nullable-field"}, {("exclusive-lock", "accounts"): "info"}),
    # Works on the empty scratch table; on the real one it fails: its rows would hold NULL.
    Change("r08", {"adding-required-field"}, {("required-column", "accounts"): "error"}),
    Change(
        "r09",
        {"adding-serial-primary-key-field", "constraint-missing-not-valid"},
        {("index-without-concurrently", "events"): "warning"},
    ),
    # The domain's CHECK is checked on accounts.contact, writes waiting (SHARE).
    Change(
        "r10",
        {"ban-alter-domain-with-add-constraint"},
        {("validated-constraint", "accounts"): "error"},
    ),
    Change("r11", {"ban-char-field"}, {("exclusive-lock", "accounts"): "info"}),
    Change("r12", {"ban-drop-column"}, {("drop-column", "accounts"): "warning"}),
    Change("r13", {"ban-drop-not-null"}, {("exclusive-lock", "accounts"): "info"}),
    Change("r14", {"ban-drop-table"}, {("drop-table", "archive"): "warning"}),
    # TRUNCATE gives both tables a new relfilenode, accounts through the cascade.
    Change(
        "r15",
        {"ban-truncate-cascade"},
        {("table-rewrite", "accounts"): "error", ("table-rewrite", "owners"): "info"},
    ),
    Change("r16", {"changing-column-type"}, {("table-rewrite", "accounts"): "error"}),
    # The CHECK on score is rebuilt and checked in the rewrite's pass: one finding.
    Change("r17", {"changing-column-type"}, {("table-rewrite", "accounts"): "error"}),
    Change(
        "r18",
        {"disallowed-unique-constraint", "constraint-missing-not-valid"},
        {("index-without-concurrently", "accounts"): "error"},
    ),
    Change("r19", {"prefer-bigint-over-int"}, {("exclusive-lock", "accounts"): "info"}),
    Change("r20", {"prefer-bigint-over-smallint"}, {("exclusive-lock", "accounts"): "info"}),
    # A serial's default is nextval(): volatile, so every row is written.
    Change("r21", {"prefer-identity"}, {("table-rewrite", "events"): "warning"}),
    Change("r22", {"adding-field-with-default"}, {("table-rewrite", "events"): "warning"}),
    Change(
        "r23",
        {"changing-column-type", "prefer-text-field"},
        {("table-rewrite", "accounts"): "error"},
    ),
    Change("r24", {"prefer-timestamp-tz"}, {("exclusive-lock", "accounts"): "info"}),
    Change("r25", {"renaming-column"}, {("rename-column", "accounts"): "warning"}),
    Change("r26", {"renaming-table"}, {("rename-table", "tags"): "warning"}),
    Change(
        "r27",
        {"require-concurrent-index-creation"},
        {("index-without-concurrently", "accounts"): "error"},
    ),
    Change("r28", {"require-concurrent-reindex"}, {("index-rebuild", "accounts"): "error"}),
    Change("r29", {"require-concurrent-index-deletion"}, {("exclusive-lock", "accounts"): "info"}),
    Change(
        "r30",
        {"require-concurrent-partition-detach"},
        {
            ("exclusive-lock", "measurements"): "info",
            ("exclusive-lock", "measurements_2024"): "info",
        },
    ),
    Change("r31", {"require-enum-value-ordering"}, {}),
    Change("r32", {"ban-create-domain-with-constraint"}, {}),
    # Outside a transaction: nothing held at commit (a note says so); squawk asks for
    # IF NOT EXISTS, since a failure half way is not rolled back.
    Change("r33", {"prefer-robust-stmts"}, {}, in_transaction=False),
    # Rewrites squawk 2.70 does not see.
    Change("r34", set(), {("table-rewrite", "accounts"): "error"}),
    Change("r35", set(), {("table-rewrite", "events"): "warning"}),
    Change("r36", set(), {("exclusive-lock", "accounts"): "info"}),  # a constant default
    # PostgreSQL refuses it in a transaction block: the measurement fails, naming it.
    Change("r37", {"ban-concurrent-index-creation-in-transaction", "prefer-robust-stmts"}, {}),
]
MEASURED = [change for change in CHANGES if change.revision <= LAST_MEASURED]


def risky_env(database: Database, **extra: str) -> dict[str, str]:
    """Measured at deploy, on a scratch database (the measurement itself under test)."""
    return {
        **database.env,
        "MIGRATOR_CONFIG": str(PROJECT / "alembic.ini"),
        "MIGRATOR_SAFETY_MEASURE": "deploy",
        **extra,
    }


@pytest.fixture
def filled(database: Database) -> Database:
    """The project's tables at r00, filled and analyzed."""
    result = run_migrator("upgrade", "r00", env=risky_env(database, MIGRATOR_SAFETY="off"))
    assert result.status == 0, result.output
    for statement in (
        f"INSERT INTO owners SELECT g, 'owner ' || g FROM generate_series(1, {FEW}) g",
        "INSERT INTO accounts (id, owner_id, email, contact, note, nickname, legacy_code, "
        "score, created_at, mood) SELECT g, g % 1000 + 1, 'user' || g || '@example.com', "
        "'user' || g || '@example.com', 'note', 'nick', 'old', g, now(), 'happy' "
        f"FROM generate_series(1, {ACCOUNTS}) g",
        f"INSERT INTO events SELECT g, g, 'login' FROM generate_series(1, {SMALLER}) g",
        f"INSERT INTO archive SELECT g, 'body' FROM generate_series(1, {SMALLER}) g",
        f"INSERT INTO tags SELECT g, 'tag ' || g FROM generate_series(1, {FEW}) g",
        "INSERT INTO measurements SELECT g, date '2024-01-01' + g % 365 "
        f"FROM generate_series(1, {SMALLER}) g",
        "ANALYZE",
    ):
        database.query(statement)
    return database


def revision_sql(revision: str) -> str:
    """The SQL constant of the revision's module, read without importing it."""
    (path,) = (PROJECT / "alembic" / "versions").glob(f"{revision}_*.py")
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(target, ast.Name) and target.id == "SQL" for target in targets):
            assert isinstance(node, ast.Assign)
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError(f"{path}: no SQL constant")


def squawk_verdicts(folder: Path) -> dict[str, set[str]]:
    """The rules squawk reports on each change's SQL, as Alembic runs it."""
    paths = []
    for change in CHANGES:
        sql = revision_sql(change.revision) + ";\n"
        path = folder / f"{change.revision}.sql"
        path.write_text(f"BEGIN;\n{sql}COMMIT;\n" if change.in_transaction else sql)
        paths.append(str(path))
    result = subprocess.run(
        [
            str(SQUAWK),
            "--reporter=json",
            "--pg-version=15",
            "--exclude=require-lock-timeout,require-statement-timeout",
            *paths,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.startswith("["), result.stdout + result.stderr
    verdicts: dict[str, set[str]] = {change.revision: set() for change in CHANGES}
    for violation in json.loads(result.stdout):
        verdicts[Path(violation["file"]).stem].add(violation["rule_name"])
    return verdicts


def migrator_verdicts(result: Any) -> dict[str, dict[tuple[str, str], str]]:
    """The plan's findings per revision: (rule, table without "public."): severity."""
    assert result.status in (0, 8), result.output
    verdicts: dict[str, dict[tuple[str, str], str]] = {c.revision: {} for c in MEASURED}
    for finding in json.loads(result.stdout)["safety"]["findings"]:
        table = finding["table"].removeprefix("public.")
        verdicts[finding["revision"]][(finding["rule"], table)] = finding["severity"]
    return verdicts


def test_each_risky_change_through_squawk_and_the_safety_report(
    filled: Database, tmp_path: Path
) -> None:
    assert len({change.revision for change in CHANGES}) >= 20

    squawk = squawk_verdicts(tmp_path)
    planned = run_migrator(
        "plan", "upgrade", LAST_MEASURED, "--safety", "--json", env=risky_env(filled)
    )

    assert squawk == {change.revision: change.squawk for change in CHANGES}
    assert migrator_verdicts(planned) == {change.revision: change.migrator for change in MEASURED}
    report = json.loads(planned.stdout)["safety"]
    assert any("r33 runs statements outside a transaction" in n for n in report["notes"])
    assert filled.revision() == "r00"  # read-only on the real database


def test_effects_recorded_at_build_are_weighed_the_same(filled: Database, tmp_path: Path) -> None:
    checkout = tmp_path / "project"  # as CI holds it, less r37, which no measurement passes
    shutil.copytree(PROJECT, checkout)
    (checkout / "alembic" / "versions" / "r37_concurrently_in_transaction.py").unlink()
    env = {**filled.env, "MIGRATOR_CONFIG": str(checkout / "alembic.ini")}

    recorded = run_migrator("manifest", "--measure", env=env)
    planned = run_migrator("plan", "upgrade", LAST_MEASURED, "--safety", "--json", env=env)

    assert recorded.status == 0, recorded.output
    assert migrator_verdicts(planned) == {change.revision: change.migrator for change in MEASURED}


def test_what_the_new_rules_say(filled: Database) -> None:
    planned = run_migrator(
        "plan", "upgrade", LAST_MEASURED, "--safety", "--json", env=risky_env(filled)
    )

    found = {
        (f["revision"], f["rule"]): f for f in json.loads(planned.stdout)["safety"]["findings"]
    }
    assert found[("r12", "drop-column")]["what"] == "drops column legacy_code"
    assert found[("r25", "rename-column")]["what"] == "renames column nickname to handle"
    assert found[("r26", "rename-table")]["what"] == "renames the table to public.labels"
    for rule in ("r12", "drop-column"), ("r14", "drop-table"), ("r25", "rename-column"):
        assert "after the deploy" in found[rule]["safer"]
        assert found[rule]["lock"] == "AccessExclusiveLock"
    assert found[("r08", "required-column")]["what"].startswith(
        "adds column region NOT NULL without a default: fails"
    )
    rebuild = found[("r28", "index-rebuild")]
    assert rebuild["what"].startswith("rebuilds index public.accounts_created_at")
    assert (rebuild["lock"], rebuild["blocks"].split(",")[0]) == ("ShareLock", "writes")
    assert "CONCURRENTLY" in rebuild["safer"]
    validate = found[("r05", "validate-constraint")]
    assert (validate["lock"], validate["blocks"]) == ("ShareUpdateExclusiveLock", "nothing")


def test_a_drop_or_rename_on_an_empty_table_is_information(database: Database) -> None:
    assert (
        run_migrator("upgrade", "r00", env=risky_env(database, MIGRATOR_SAFETY="off")).status == 0
    )

    planned = run_migrator(
        "plan", "upgrade", LAST_MEASURED, "--safety", "--json", env=risky_env(database)
    )

    verdicts = migrator_verdicts(planned)
    assert verdicts["r12"] == {("drop-column", "accounts"): "info"}
    assert verdicts["r14"] == {("drop-table", "archive"): "info"}
    assert {s for found in verdicts.values() for s in found.values()} == {"info"}


def test_concurrently_in_the_transaction_fails_on_the_scratch_database(filled: Database) -> None:
    result = run_migrator("plan", "upgrade", "head", "--safety", env=risky_env(filled))

    assert result.status == 1, result.output
    assert "measuring on the scratch database: r37 failed" in result.stderr
    assert filled.revision() == "r00"


# In-process: the weighing alone, on effects as a manifest carries them (JSON).


def test_effects_survive_json_and_weigh_the_same() -> None:
    measured = Effects(
        "r1",
        "contract",
        "upgrade",
        locks={"public.a": "AccessExclusiveLock", "public.b": "ShareUpdateExclusiveLock"},
        dropped_columns=[{"table": "public.a", "column": "old"}],
        renamed=[{"table": "public.c", "to": "public.d"}],
        validated_existing=[{"table": "public.b", "constraint": "b_check"}],
    )
    record = json.loads(json.dumps(asdict(measured)))
    sizes = {"public.a": (5, 8192), "public.b": (10**9, 8192), "public.c": (0, 8192)}

    report = weigh([Effects(**record)], sizes, {}, warn_rows=10_000, error_rows=100_000)

    assert Effects(**record) == measured
    assert {(f.rule, f.table): f.severity for f in report.findings} == {
        ("drop-column", "public.a"): "warning",  # 5 rows: the running release still reads it
        ("validate-constraint", "public.b"): "info",  # a billion rows, writes going on
        ("rename-table", "public.c"): "info",  # empty
    }


def test_rows_not_known_are_not_assumed_small() -> None:
    measured = Effects("r1", "", "upgrade", dropped=["public.a"], reindexed=[])

    report = weigh([measured], {"public.a": (None, 8192)}, {}, 10_000, 100_000)

    assert [(f.rule, f.severity) for f in report.findings] == [("drop-table", "warning")]


def test_a_table_the_run_creates_has_no_finding_and_a_renamed_one_keeps_its_size() -> None:
    """In the order the revisions run: r1 creates public.n and renames public.big; r2 then
    rewrites both. The new table is empty when r2 runs; the renamed one is the big one."""
    first = Effects(
        "r1",
        "",
        "upgrade",
        locks={"public.big": "AccessExclusiveLock"},
        created=["public.n"],
        renamed=[{"table": "public.big", "to": "public.bigger"}],
    )
    second = Effects(
        "r2",
        "",
        "upgrade",
        locks={"public.n": "AccessExclusiveLock", "public.bigger": "AccessExclusiveLock"},
        rewritten=["public.bigger", "public.n"],
    )
    sizes = {"public.big": (10**6, 8192)}

    report = weigh([first, second], sizes, {}, warn_rows=10_000, error_rows=100_000)

    assert {(f.revision, f.rule, f.table): f.severity for f in report.findings} == {
        ("r1", "rename-table", "public.big"): "warning",
        ("r2", "table-rewrite", "public.bigger"): "error",
    }
