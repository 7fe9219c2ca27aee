"""SET UNLOGGED: a rewrite by another spelling"""

from alembic import op

revision = "r35"
down_revision = "r34"

SQL = "ALTER TABLE events SET UNLOGGED"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
