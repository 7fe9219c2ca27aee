"""REINDEX (squawk: require-concurrent-reindex)"""

from alembic import op

revision = "r28"
down_revision = "r27"

SQL = "REINDEX INDEX accounts_created_at"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
