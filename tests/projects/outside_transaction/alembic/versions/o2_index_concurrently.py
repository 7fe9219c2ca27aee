"""index items concurrently"""

import os

from alembic import op

revision = "o2o2o2o2o2o2"
down_revision = "o1o1o1o1o1o1"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("INSERT INTO steps VALUES ('before')")
        op.execute(f"SELECT pg_sleep({float(os.environ.get('SAMPLE_SLEEP', '0'))})")
        op.execute("INSERT INTO steps VALUES ('after')")
        op.execute("CREATE UNIQUE INDEX CONCURRENTLY items_code ON items (code)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY items_code")
