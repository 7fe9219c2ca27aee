"""DROP TABLE (squawk: ban-drop-table)"""

from alembic import op

revision = "r14"
down_revision = "r13"

SQL = "DROP TABLE archive"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
