"""a timestamp column (squawk: prefer-timestamptz)"""

from alembic import op

revision = "r24"
down_revision = "r23"

SQL = "ALTER TABLE accounts ADD COLUMN seen_at timestamp"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
