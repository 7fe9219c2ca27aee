"""What the migrator asks PostgreSQL in more than one place, written once: which schemas are
the system's, which database is this one, what the version table is called, how the run
marks its session. Plain SQL text, so that the fast path (fast.py) reads it without
importing SQLAlchemy; the full path wraps it in `text()`.
"""

from __future__ import annotations

from typing import Any

# The setting the run's session is marked with (session.py): a second connection that finds
# it was handed a used session by a pooler; the lock's fence compares it with the token.
SESSION_TOKEN = "migrator.session"
SESSION_MARK = f"current_setting('{SESSION_TOKEN}', true)"
# A session the run may write on: not a standby, not read-only by default.
IN_RECOVERY = "pg_is_in_recovery() AS in_recovery"
READ_ONLY = "current_setting('transaction_read_only') = 'on' AS read_only"


def user_schema(nspname: str) -> str:
    """A condition on a schema-name column: the schema is the database's own, not the
    system's (pg_catalog, information_schema, pg_toast*, pg_temp_* and pg_toast_temp_*)."""
    return (
        f"{nspname} NOT IN ('pg_catalog', 'information_schema') "
        f"AND {nspname} !~ '^pg_(toast|temp_)'"
    )


def this_database(column: str) -> str:
    """A condition on a database-oid column (pg_locks.database): the session's own database."""
    return f"{column} = (SELECT oid FROM pg_database WHERE datname = current_database())"


def quote_identifier(name: str) -> str:
    """A name as SQL reads it exactly as written: in double quotes, a quote doubled."""
    return '"' + name.replace('"', '""') + '"'


# The migrator's deploy ledger (migrator/ledger.py), beside the version table.
LEDGER_TABLE = "migrator_ledger"
# Its newest row for each revision that says where the revision is.
LEDGER_OUTCOMES_IN_THE_DATABASE = ("applied", "adopted", "accepted", "stamped", "outside")


def ledger_newest_rows(schema: str | None) -> str:
    """The statement that reads each revision's newest row that put it in the database or
    took it out (reverted): revision, outcome, checksum, finished_at, deploy, seconds."""
    outcomes = ", ".join(
        f"'{outcome}'" for outcome in (*LEDGER_OUTCOMES_IN_THE_DATABASE, "reverted")
    )
    return (
        "SELECT DISTINCT ON (revision) revision, outcome, checksum, finished_at, deploy, seconds "
        f"FROM {version_table(LEDGER_TABLE, schema)} WHERE outcome IN ({outcomes}) "
        "ORDER BY revision, id DESC"
    )


# A ledger row as a run's summary, the fleet's report and the action's job summary show it:
# one JSON object, its time in UTC, built by the server so both paths (fast.py's driver
# and SQLAlchemy) read it alike.
LEDGER_ROW_JSON = (
    "json_build_object('revision', revision, 'direction', direction, 'outcome', outcome, "
    "'finished_at', to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
    "'seconds', round(seconds::numeric, 3), 'deploy', deploy, 'host', host, 'detail', detail)"
)


def ledger_doubt(rows: list[Any], checksums: dict[str, str]) -> str | None:
    """Why `ledger_newest_rows`' rows do not name each of `checksums`' revisions as in the
    database with that checksum (a revision applied outside the migrator, or edited since):
    a run must look closer. None when they do."""
    recorded = {row[0]: (row[1], row[2]) for row in rows}  # outcome, checksum
    for revision, checksum in checksums.items():
        outcome, known = recorded.get(revision, ("missing", None))
        if outcome in ("reverted", "missing") or known != checksum:
            return f"the deploy ledger has {revision} {outcome}, or another checksum"
    return None


def literal_colons(sql: str) -> str:
    """A statement without parameters, for SQLAlchemy's text(): a ':' in a name or a format
    is not a parameter."""
    return sql.replace(":", "\\:")


def ledger_last_row(schema: str | None) -> str:
    """The statement that reads the ledger's newest row, as LEDGER_ROW_JSON."""
    return (
        f"SELECT {LEDGER_ROW_JSON} FROM {version_table(LEDGER_TABLE, schema)} "
        "ORDER BY id DESC LIMIT 1"
    )


def version_table(name: str, schema: str | None) -> str:
    """The version table env.py names (Alembic's version_table and version_table_schema), as
    SQL names it: quoted; without a schema, found as Alembic finds it, through search_path
    (so in MIGRATOR_SCHEMA's schema)."""
    qualified = [schema, name] if schema else [name]
    return ".".join(quote_identifier(part) for part in qualified)


def select_versions(name: str, schema: str | None) -> str:
    """The statement that reads the database's revisions from the version table."""
    return f"SELECT version_num FROM {version_table(name, schema)}"
