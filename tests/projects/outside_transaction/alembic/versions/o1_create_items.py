"""create items"""

import os

from alembic import op

revision = "o1o1o1o1o1o1"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE steps (step text NOT NULL)")
    op.execute("CREATE TABLE items (code text NOT NULL)")
    op.execute("INSERT INTO items VALUES ('a'), ('b')")
    if os.environ.get("SAMPLE_DUPLICATES"):
        op.execute("INSERT INTO items VALUES ('a')")


def downgrade() -> None:
    op.execute("DROP TABLE items")
    op.execute("DROP TABLE steps")
