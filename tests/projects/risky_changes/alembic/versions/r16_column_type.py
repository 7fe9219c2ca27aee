"""a column's type (squawk: changing-column-type)"""

from alembic import op

revision = "r16"
down_revision = "r15"

SQL = "ALTER TABLE accounts ALTER COLUMN id TYPE bigint"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
