"""SET NOT NULL that a validated CHECK proves: no scan"""

from alembic import op

revision = "r07"
down_revision = "r06"

SQL = "ALTER TABLE accounts ALTER COLUMN email SET NOT NULL"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
