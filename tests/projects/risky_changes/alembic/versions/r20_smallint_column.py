"""a smallint column (squawk: prefer-bigint-over-smallint)"""

from alembic import op

revision = "r20"
down_revision = "r19"

SQL = "ALTER TABLE accounts ADD COLUMN rank smallint"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
