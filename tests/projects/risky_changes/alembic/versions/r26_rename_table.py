"""RENAME TO (squawk: renaming-table)"""

from alembic import op

revision = "r26"
down_revision = "r25"

SQL = "ALTER TABLE tags RENAME TO labels"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
