"""The scratch database that `verify` and a measurement run their revisions in: created on the
configured server for one run and dropped on every exit, or MIGRATOR_VERIFY_URL's, which is
neither created nor dropped.

Its name says what made it and when (`migrator_scratch_verify_1764979200_1a2b3c4d`), so
that one a killed run left behind (a SIGKILL leaves no time to drop it) is recognised: the
next run that makes one drops each that is over an hour old and has no session.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from migrator import signals, wait
from migrator.config import Settings
from migrator.errors import AccessDenied, UsageError, reason, refusal
from migrator.logs import log
from migrator.scratch import Identity, session_identity

PREFIX = "migrator_scratch_"
# A scratch database older than this, with no session, was left by a killed run.
LEFTOVER_SECONDS = 3600
_NAMED = re.compile(rf"^{PREFIX}[a-z]+_(\d+)_[0-9a-f]+$")
# Left by migrator versions before the names said when (no age to go by: named, not dropped).
_OLDER_PREFIX = "migrator_verify_"
_UNUSED = text(
    """
    SELECT d.datname FROM pg_database d
    WHERE (d.datname LIKE 'migrator\\_scratch\\_%' OR d.datname LIKE 'migrator\\_verify\\_%')
      AND NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.datname = d.datname)
    ORDER BY d.datname
    """
)


def settings_for(settings: Settings, made_by: str) -> Settings:
    """The settings with MIGRATOR_VERIFY_URL's database, or a new scratch database's name."""
    if settings.verify_url is not None:
        return replace(settings, database_url=settings.verify_url)
    if settings.database_url is None:
        settings.connection_url()  # raises: no database configured
    assert settings.database_url is not None
    name = f"{PREFIX}{made_by}_{int(time.time())}_{uuid.uuid4().hex[:8]}"
    return replace(settings, database_url=settings.database_url.set(database=name))


@contextmanager
def made(settings: Settings, scratch: Settings, patience: float) -> Iterator[Identity | None]:
    """The scratch database `scratch` names, created on the configured server (waiting at
    most `patience` seconds for a connection) and dropped on every exit; MIGRATOR_VERIFY_URL's
    is used as it is. Yields the identity of the database the configuration names, which
    the scratch must never be (None when only MIGRATOR_VERIFY_URL is configured)."""
    if settings.verify_url is not None:
        yield _configured_identity(settings, patience)
        return
    assert scratch.database_url is not None
    name = scratch.database_url.database
    engine = create_engine(
        settings.connection_url(), poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    setting = "MIGRATOR_WAIT_TIMEOUT" if patience == settings.wait_timeout else None
    with wait.connect(engine, patience, setting=setting) as connection:
        configured = session_identity(connection)
        _drop_leftovers(connection)
        try:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        except DBAPIError as error:
            problem = f"cannot create a scratch database: {reason(error)}"
            if isinstance(refusal(error), AccessDenied):
                raise AccessDenied(
                    f"{problem}: grant the role CREATEDB, or set MIGRATOR_VERIFY_URL to a "
                    "database of its own for the scratch work"
                ) from None
            raise refusal(error) or UsageError(problem) from None
    log.info("scratch database %s created", name)
    try:
        yield configured
    finally:
        # Also after SIGTERM: this connection is exempt from the stop.
        with signals.cleanup_connection(engine) as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
        log.info("scratch database %s dropped", name)


def _drop_leftovers(connection: Connection) -> None:
    """Drop each scratch database a killed run left (over an hour old, no session); name the
    ones older migrators left, which say nothing of their age."""
    now = time.time()
    older = []
    for (name,) in connection.execute(_UNUSED):
        made_at = _NAMED.match(name)
        if made_at is None:
            older += [name] if name.startswith(_OLDER_PREFIX) else []
            continue
        if now - int(made_at.group(1)) < LEFTOVER_SECONDS:
            continue
        try:
            # Without FORCE: a session that began meanwhile keeps it.
            connection.execute(text(f'DROP DATABASE "{name}"'))
        except DBAPIError as error:
            log.warning(
                "scratch database %s left by a killed run: not dropped: %s", name, reason(error)
            )
            continue
        log.warning("scratch database %s left by a killed run: dropped", name)
    if older:
        log.warning(
            "scratch database(s) left by an older migrator, with no session: %s; "
            "drop them by hand (DROP DATABASE) once no run of that version is going",
            ", ".join(older),
        )


def _configured_identity(settings: Settings, patience: float) -> Identity | None:
    """What DATABASE_URL (or DB_*) names, when it is configured beside MIGRATOR_VERIFY_URL."""
    if settings.database_url is None:
        return None
    engine = create_engine(settings.connection_url(), poolclass=NullPool)
    try:
        setting = "MIGRATOR_WAIT_TIMEOUT" if patience == settings.wait_timeout else None
        with wait.connect(engine, patience, announce=False, setting=setting) as connection:
            return session_identity(connection)
    finally:
        engine.dispose()
