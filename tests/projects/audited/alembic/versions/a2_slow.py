"""slow revision"""

import os

from alembic import op

revision = "a2a2a2a2a2a2"
down_revision = "a1a1a1a1a1a1"


def upgrade() -> None:
    op.execute("CREATE TABLE slow_done (id int)")
    op.execute(f"SELECT pg_sleep({float(os.environ.get('SAMPLE_SLEEP', '0'))})")
    op.execute("INSERT INTO applied (revision) VALUES ('a2a2a2a2a2a2')")


def downgrade() -> None:
    op.execute("DELETE FROM applied WHERE revision = 'a2a2a2a2a2a2'")
    op.execute("DROP TABLE slow_done")
