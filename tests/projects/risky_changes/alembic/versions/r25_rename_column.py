"""RENAME COLUMN (squawk: renaming-column)"""

from alembic import op

revision = "r25"
down_revision = "r24"

SQL = "ALTER TABLE accounts RENAME COLUMN nickname TO handle"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
