"""a char(n) column (squawk: ban-char-field)"""

from alembic import op

revision = "r11"
down_revision = "r10"

SQL = "ALTER TABLE accounts ADD COLUMN country char(2)"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
