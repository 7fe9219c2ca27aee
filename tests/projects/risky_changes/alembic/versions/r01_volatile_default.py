"""a column with a volatile default (squawk: adding-field-with-default)"""

from alembic import op

revision = "r01"
down_revision = "r00"

SQL = "ALTER TABLE accounts ADD COLUMN token uuid DEFAULT gen_random_uuid()"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
