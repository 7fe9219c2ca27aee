"""The no-op fast path: `upgrade head` on a database already at head, answered with psycopg2
alone, without importing SQLAlchemy or Alembic (Argo CD runs a PreSync hook on every sync).

It may only ever say "nothing to do" when the full path would say the same, so it answers
only when everything is plain: the command is `upgrade head`, every setting is valid, the
project's manifest (manifest.py) matches its files and has one head, the server is a
writable PostgreSQL session that no pooler handed on, and the version table holds exactly
that head. On any doubt it returns None and the full path runs from the start.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from migrator import config, manifest
from migrator.config import Settings
from migrator.logs import Summary, log, report_summary, setup_logging
from migrator.masking import Mask

_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg2://")
_MARK = "SELECT current_setting('migrator.session', true)"


class Doubt(Exception):
    """Why the fast path does not answer."""


def nothing_to_do(arguments: Sequence[str], environ: Mapping[str, str]) -> int | None:
    """0 when the database is already at head (logged as the full path logs it); None for
    the full path to decide."""
    summary = Summary(command="upgrade")
    level = environ.get("MIGRATOR_LOG_LEVEL", "").strip().upper()
    log_format = environ.get("MIGRATOR_LOG_FORMAT", "").strip().lower()
    setup_logging(
        "json" if log_format == "json" else "text", "DEBUG" if level == "DEBUG" else "INFO"
    )
    try:
        return _answer(arguments, environ, summary)
    except Exception as doubt:  # any doubt at all, expected or not: the full path decides
        log.debug("fast path: %s; taking the full path", doubt)
        return None


def _answer(arguments: Sequence[str], environ: Mapping[str, str], summary: Summary) -> int:
    _check_request(arguments, environ)
    settings = config.load_settings(environ, {}, urls=False)  # raises on any bad value
    parameters, masked, passwords = _connection(environ, settings)
    mask = Mask(passwords)
    setup_logging(settings.log_format, settings.log_level, mask, settings.tenant)
    try:
        known = manifest.read(settings.alembic_ini)
    except (OSError, ValueError, KeyError) as error:
        raise Doubt(f"no usable manifest ({error})") from None
    if len(known["heads"]) != 1:
        raise Doubt("the project has several heads")
    (head,) = known["heads"]
    started = time.monotonic()
    heads, version = _database_heads(parameters, known)
    if heads != [head]:
        raise Doubt(f"the database is at {', '.join(heads) or 'base'}")
    log.info("connecting to %s", masked)
    log.info(
        "database ready after %.2f s (PostgreSQL %s)",
        time.monotonic() - started,
        version,
        extra={"fields": {"event": "connected", "server_version": version}},
    )
    log.info("nothing to do: the database is at %s", head)
    summary.from_revision = summary.to_revision = head
    report_summary(summary, mask, settings.termination_log, settings.summary_file)
    log.debug("answered by the manifest (SQLAlchemy imported: %s)", "sqlalchemy" in sys.modules)
    return 0


def _check_request(arguments: Sequence[str], environ: Mapping[str, str]) -> None:
    """Only `upgrade head`, asked plainly; settings the full path checks on the session
    (its timeouts) are left to it."""
    if list(arguments) not in ([], ["upgrade"], ["upgrade", "head"]):
        raise Doubt("not a plain `upgrade head`")
    wanted = {"MIGRATOR_COMMAND": "upgrade", "MIGRATOR_TARGET": "head"}
    for name, value in wanted.items():
        if environ.get(name, "").strip() not in ("", value):
            raise Doubt(f"{name} asks for something else")
    for name in ("MIGRATOR_STATEMENT_TIMEOUT", "MIGRATOR_DDL_LOCK_TIMEOUT", "MIGRATOR_SCHEMA"):
        if environ.get(name, "").strip():
            raise Doubt(f"{name} is checked on the session")
    if environ.get("MIGRATOR_VERIFY_URL", "").strip():
        raise Doubt("MIGRATOR_VERIFY_URL is checked by parsing it (SQLAlchemy's URL)")


def _connection(
    environ: Mapping[str, str], settings: Settings
) -> tuple[dict[str, Any], str, list[str]]:
    """libpq's parameters, the URL as the full path prints it (masked), and the passwords."""
    text = config.database_url_text(environ)
    if text is None:
        parts = config.database_parts(environ)
        parameters: dict[str, Any] = {
            "host": parts["host"],
            "port": parts["port"],
            "dbname": parts["database"],
            "user": parts["username"],
            "password": parts["password"],
        }
        password = ":***" if parts["password"] else ""
        masked = (
            f"postgresql+psycopg2://{quote(parts['username'], safe=' +')}{password}@"
            f"{parts['host']}:{parts['port']}/{quote(parts['database'], safe=' +/')}"
        )
    else:
        scheme = next((scheme for scheme in _SCHEMES if text.startswith(scheme)), None)
        if scheme is None:
            raise Doubt("DATABASE_URL is not a plain postgresql:// URL")
        rest = text[len(scheme) :]
        parameters = _psycopg2().extensions.parse_dsn(f"postgresql://{rest}")
        if "@" in str(parameters.get("host", "")):
            raise Doubt("DATABASE_URL's host has an @")
        masked = Mask()(f"postgresql+psycopg2://{rest}")
    parameters.update(settings.libpq_defaults(parameters))
    return parameters, masked, [str(parameters["password"])] if parameters.get("password") else []


def _database_heads(parameters: dict[str, Any], known: dict[str, Any]) -> tuple[list[str], str]:
    """The version table's rows, on a writable session that no pooler handed on: the first
    connection marks its session; the second must not find a mark (as in session.py)."""
    psycopg2 = _psycopg2()
    from psycopg2 import sql

    first = psycopg2.connect(**parameters)
    try:
        with first.cursor() as cursor:
            cursor.execute(_MARK)
            if (cursor.fetchone() or [None])[0]:
                raise Doubt("a pooler handed on a used session")
            cursor.execute("SELECT set_config('migrator.session', %s, false)", (uuid.uuid4().hex,))
        first.commit()
    finally:
        first.close()
    second = psycopg2.connect(**parameters)
    try:
        with second.cursor() as cursor:
            cursor.execute(
                f"{_MARK}, pg_is_in_recovery(), current_setting('transaction_read_only')"
            )
            marked, in_recovery, read_only = cursor.fetchone() or (None, True, "on")
            if marked or in_recovery or read_only == "on":
                raise Doubt("a pooler, or a read-only server")
            table = (
                sql.Identifier(known["version_table_schema"], known["version_table"])
                if known["version_table_schema"]
                else sql.Identifier(known["version_table"])
            )
            cursor.execute(sql.SQL("SELECT version_num FROM {}").format(table))
            heads = sorted(row[0] for row in cursor.fetchall())
        number = second.server_version
        if number < 100000:
            raise Doubt("PostgreSQL before 10")
        return heads, f"{number // 10000}.{number % 10000}"
    finally:
        second.close()


def _psycopg2() -> Any:
    """The driver, imported only here: an install without it (the package's extras) takes
    the full path, which says what to install."""
    try:
        import psycopg2
        import psycopg2.extensions
    except ImportError:
        raise Doubt("psycopg2 is not installed") from None
    return psycopg2


def main() -> int:
    """The command's entry: a no-op deploy answered here, anything else by the CLI."""
    answered = nothing_to_do(sys.argv[1:], os.environ)
    if answered is not None:
        return answered
    from migrator.cli import main as full_path

    return full_path()
