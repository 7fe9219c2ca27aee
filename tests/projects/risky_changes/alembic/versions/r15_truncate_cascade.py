"""TRUNCATE ... CASCADE (squawk: ban-truncate-cascade)"""

from alembic import op

revision = "r15"
down_revision = "r14"

SQL = "TRUNCATE owners CASCADE"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
