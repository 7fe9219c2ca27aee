"""Prints the schema of the database DB_* / DATABASE_URL name, one object per line, sorted:
what `migrator verify` compares, for comparing two moments of a database with `diff`.

Usage: .venv/bin/python scripts/ci/schema_dump.py > schema.txt
"""

import os
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from migrator import ledger
from migrator.config import load_settings
from migrator.run import version_table_oid
from migrator.verify import snapshot

ROOT = Path(__file__).resolve().parents[2]
settings = load_settings(os.environ, {"MIGRATOR_CONFIG": str(ROOT / "alembic.ini")})
engine = create_engine(settings.connection_url(), poolclass=NullPool)
with engine.connect() as connection:
    # The example's version table (Alembic's default), left out as verify leaves it out.
    version_table = version_table_oid(MigrationContext.configure(connection))
    for name, definition in sorted(snapshot(connection, version_table).items()):
        # The migrator's deploy ledger stays at base, as the version table does.
        if ledger.TABLE_NAME not in name:
            print(f"{name}: {definition}")
engine.dispose()
