"""DROP COLUMN (squawk: ban-drop-column)"""

from alembic import op

revision = "r12"
down_revision = "r11"

SQL = "ALTER TABLE accounts DROP COLUMN legacy_code"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
