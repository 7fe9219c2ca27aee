"""DROP NOT NULL (squawk: ban-drop-not-null)"""

from alembic import op

revision = "r13"
down_revision = "r12"

SQL = "ALTER TABLE accounts ALTER COLUMN owner_id DROP NOT NULL"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
