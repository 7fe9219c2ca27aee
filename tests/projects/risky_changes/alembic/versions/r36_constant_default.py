"""a column with a constant default: catalog only since PostgreSQL 11"""

from alembic import op

revision = "r36"
down_revision = "r35"

SQL = "ALTER TABLE accounts ADD COLUMN plan text DEFAULT 'free'"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
