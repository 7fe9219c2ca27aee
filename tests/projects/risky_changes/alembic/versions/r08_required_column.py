"""a NOT NULL column without a default (squawk: adding-required-field)"""

from alembic import op

revision = "r08"
down_revision = "r07"

SQL = "ALTER TABLE accounts ADD COLUMN region text NOT NULL"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
