"""an int column (squawk: prefer-bigint-over-int)"""

from alembic import op

revision = "r19"
down_revision = "r18"

SQL = "ALTER TABLE accounts ADD COLUMN visits int"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
