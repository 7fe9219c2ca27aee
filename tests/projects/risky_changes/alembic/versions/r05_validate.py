"""VALIDATE CONSTRAINT: the safe second step (SHARE UPDATE EXCLUSIVE)"""

from alembic import op

revision = "r05"
down_revision = "r04"

SQL = "ALTER TABLE accounts VALIDATE CONSTRAINT accounts_email_present"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
