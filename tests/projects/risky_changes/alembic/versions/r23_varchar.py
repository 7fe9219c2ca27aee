"""text to varchar(n) (squawk: prefer-text-field)"""

from alembic import op

revision = "r23"
down_revision = "r22"

SQL = "ALTER TABLE accounts ALTER COLUMN email TYPE varchar(320)"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
