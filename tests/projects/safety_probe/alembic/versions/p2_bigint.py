"""accounts.id to bigint: a rewrite under ACCESS EXCLUSIVE"""

import os

from alembic import op

revision = "p2"
down_revision = "p1"
migrator_safety = {"allow": os.environ.get("SAMPLE_ALLOW", "").split()}


def upgrade() -> None:
    op.execute("ALTER TABLE accounts ALTER COLUMN id TYPE bigint")


def downgrade() -> None:
    op.execute("ALTER TABLE accounts ALTER COLUMN id TYPE int")
