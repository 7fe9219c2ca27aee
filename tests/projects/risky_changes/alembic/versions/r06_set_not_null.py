"""SET NOT NULL with a scan (squawk: adding-not-nullable-field)"""

from alembic import op

revision = "r06"
down_revision = "r05"

SQL = "ALTER TABLE accounts ALTER COLUMN note SET NOT NULL"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
