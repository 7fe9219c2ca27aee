"""CLUSTER (squawk's later prefer-repack)"""

from alembic import op

revision = "r34"
down_revision = "r33"

SQL = "CLUSTER accounts USING accounts_pkey"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
