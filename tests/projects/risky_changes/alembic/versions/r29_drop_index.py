"""DROP INDEX (squawk: require-concurrent-index-deletion)"""

from alembic import op

revision = "r29"
down_revision = "r28"

SQL = "DROP INDEX accounts_owner_id"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
