"""CREATE INDEX (squawk: require-concurrent-index-creation)"""

from alembic import op

revision = "r27"
down_revision = "r26"

SQL = "CREATE INDEX accounts_created_at ON accounts (created_at)"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
