"""The no-op fast path: `upgrade head` on a database already at head, answered with the
URL's driver alone (psycopg 3 or psycopg2), without importing SQLAlchemy or Alembic (Argo CD
runs a PreSync hook on every sync).

It may only ever say "nothing to do" when the full path would say the same, so it answers
only when everything is plain: the command is `upgrade head`, every setting is valid, the
project's manifest (manifest.py) matches its files and has one head, the server is a
writable PostgreSQL session that no pooler handed on, and the version table holds exactly
that head. On any doubt it returns None and the full path runs from the start.
"""

from __future__ import annotations

import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from migrator import catalog, config, logs, manifest, signals
from migrator.config import Settings
from migrator.logs import log, report_summary, setup_logging
from migrator.masking import Mask
from migrator.summary import Summary

# The schemes the fast path reads, and the driver each names (None: SQLAlchemy's default).
_SCHEMES = {
    "postgresql": None,
    "postgres": None,
    "postgresql+psycopg": "psycopg",
    "postgresql+psycopg2": "psycopg2",
}
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


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
    except Doubt as doubt:
        log.debug("fast path: %s; taking the full path", doubt)
        return None
    except Exception as error:  # any doubt at all: the full path decides, and says why
        # Only the kind: a driver's message may quote the URL, before any mask is set up.
        log.debug("fast path: %s; taking the full path", type(error).__name__)
        return None


def _answer(arguments: Sequence[str], environ: Mapping[str, str], summary: Summary) -> int:
    _check_stop()
    _check_request(arguments, environ)
    settings = config.load_settings(environ, {}, urls=False)  # raises on any bad value
    driver, parameters, masked, passwords = _connection(environ, settings)
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
    heads, version, last_row = _database_heads(driver, parameters, known)
    if heads != [head]:
        raise Doubt(f"the database is at {', '.join(heads) or 'base'}")
    _check_stop()
    logs.connecting(masked)
    logs.database_ready(time.monotonic() - started, version)
    logs.nothing_to_do(head)
    summary.from_revision = summary.to_revision = head
    summary.ledger = last_row
    report_summary(summary, mask, settings.termination_log, settings.summary_file)
    log.debug("answered by the manifest (SQLAlchemy imported: %s)", "sqlalchemy" in sys.modules)
    return 0


def _check_stop() -> None:
    """A signal received so far (migrator/__main__.py records it) is reported by the full
    path, as one received later would be: 143 or 130, status interrupted."""
    if signals.stop_requested.is_set():
        raise Doubt("a stop was requested")


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
    if environ.get("MIGRATOR_PHASE", "").strip():
        raise Doubt("MIGRATOR_PHASE: a phase's head is not the manifest's")
    if environ.get("MIGRATOR_VERIFY_URL", "").strip():
        raise Doubt("MIGRATOR_VERIFY_URL is checked by parsing it (SQLAlchemy's URL)")


def _connection(
    environ: Mapping[str, str], settings: Settings
) -> tuple[Driver, dict[str, Any], str, list[str]]:
    """The driver, libpq's parameters, the URL as the full path prints it (masked), and the
    passwords."""
    text = config.database_url_text(environ)
    if text is None:
        driver = _driver(_default_driver())
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
            f"postgresql+{driver.name}://{quote(parts['username'], safe=' +')}{password}@"
            f"{parts['host']}:{parts['port']}/{quote(parts['database'], safe=' +/')}"
        )
    else:
        scheme, separator, rest = text.partition("://")
        if not separator or scheme not in _SCHEMES:
            raise Doubt("DATABASE_URL is not a plain postgresql:// URL")
        _check_userinfo(rest)
        driver = _driver(_SCHEMES[scheme] or _default_driver())
        try:
            parameters = driver.parse(f"postgresql://{rest}")
        except Exception:  # libpq's message quotes what it could not read: the password
            raise Doubt("libpq cannot read DATABASE_URL") from None
        if "@" in str(parameters.get("host", "")):
            raise Doubt("DATABASE_URL's host has an @")
        masked = Mask()(f"postgresql+{driver.name}://{rest}")
    parameters.update(settings.libpq_defaults(parameters))
    passwords = [str(parameters["password"])] if parameters.get("password") else []
    return driver, parameters, masked, passwords


def _check_userinfo(rest: str) -> None:
    """Only a user and password that libpq reads as SQLAlchemy does: libpq ends them at a
    `/` and refuses a `%` that is not an escape, where SQLAlchemy reads on to the `@`."""
    userinfo, at, _ = rest.rpartition("@")
    if at and (any(c in userinfo for c in "/?#") or _BARE_PERCENT.search(userinfo)):
        raise Doubt("DATABASE_URL's user or password has characters that are not URL-encoded")


def _database_heads(
    driver: Driver, parameters: dict[str, Any], known: dict[str, Any]
) -> tuple[list[str], str, dict[str, Any] | None]:
    """The version table's rows, on a writable session that no pooler handed on (the first
    connection marks its session; the second must not find a mark, as in session.py), the
    server's version, and, at the manifest's heads, the ledger's newest row."""
    first = driver.module.connect(**parameters)
    try:
        with first.cursor() as cursor:
            cursor.execute(f"SELECT {catalog.SESSION_MARK}")
            if (cursor.fetchone() or [None])[0]:
                raise Doubt("a pooler handed on a used session")
            mark = f"SELECT set_config('{catalog.SESSION_TOKEN}', %s, false)"
            cursor.execute(mark, (uuid.uuid4().hex,))
        first.commit()
    finally:
        first.close()
    second = driver.module.connect(**parameters)
    try:
        with second.cursor() as cursor:
            cursor.execute(
                f"SELECT {catalog.SESSION_MARK}, {catalog.IN_RECOVERY}, {catalog.READ_ONLY}"
            )
            marked, in_recovery, read_only = cursor.fetchone() or (None, True, True)
            if marked or in_recovery or read_only:
                raise Doubt("a pooler, or a read-only server")
            table = known["version_table"], known["version_table_schema"]
            cursor.execute(catalog.select_versions(*table))
            heads = sorted(row[0] for row in cursor.fetchall())
            last_row = None
            if heads == sorted(known["heads"]):  # else the caller says where it is
                schema = known["version_table_schema"]
                last_row = _check_ledger(cursor, schema, known["checksums"], driver.module.Error)
        number = second.info.server_version
        if number < 100000:
            raise Doubt("PostgreSQL before 10")
        return heads, f"{number // 10000}.{number % 10000}", last_row
    finally:
        second.close()


def _check_ledger(
    cursor: Any, schema: str | None, checksums: dict[str, str], errors: Any
) -> dict[str, Any] | None:
    """The ledger names every revision as applied with its file's checksum as the manifest
    has it (else, with no ledger yet, a revision applied outside or an edited one, the full
    path decides); its newest row, for the summary."""
    try:
        cursor.execute(catalog.ledger_newest_rows(schema))
    except errors:
        raise Doubt("no deploy ledger yet") from None  # the full path creates it
    doubt = catalog.ledger_doubt(cursor.fetchall(), checksums)
    if doubt is not None:
        raise Doubt(doubt)
    cursor.execute(catalog.ledger_last_row(schema))
    last_row: dict[str, Any] | None = (cursor.fetchone() or [None])[0]
    return last_row


@dataclass
class Driver:
    """psycopg 3 or psycopg2: the same libpq, with the same parameters."""

    name: str
    module: Any
    parse: Callable[[str], dict[str, Any]]  # libpq's own reading of a URL


def _driver(name: str) -> Driver:
    """The driver, imported only here: an install without it (the package's extras) takes
    the full path, which says what to install."""
    try:
        if name == "psycopg":
            import psycopg
            import psycopg.conninfo

            return Driver(name, psycopg, psycopg.conninfo.conninfo_to_dict)
        import psycopg2
        import psycopg2.extensions

        return Driver(name, psycopg2, psycopg2.extensions.parse_dsn)
    except ImportError:
        raise Doubt(f"{name} is not installed") from None


def _default_driver() -> str:
    """What SQLAlchemy runs postgresql:// on (config.py names it the same way), read from its
    version rather than imported: psycopg 3 since SQLAlchemy 2.1."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("sqlalchemy").split(".")[:2])
    return "psycopg" if (major, minor) >= (2, 1) else "psycopg2"


def main() -> int:
    """The command's entry: a no-op deploy answered here, anything else by the CLI."""
    answered = nothing_to_do(sys.argv[1:], os.environ)
    if answered is not None:
        return answered
    from migrator.cli import main as full_path

    return full_path()
