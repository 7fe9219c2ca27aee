"""the type of a column with a CHECK: the CHECK is rebuilt in the rewrite"""

from alembic import op

revision = "r17"
down_revision = "r16"

SQL = "ALTER TABLE accounts ALTER COLUMN score TYPE bigint"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
