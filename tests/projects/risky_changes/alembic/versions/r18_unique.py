"""a UNIQUE constraint (squawk: disallowed-unique-constraint)"""

from alembic import op

revision = "r18"
down_revision = "r17"

SQL = "ALTER TABLE accounts ADD CONSTRAINT accounts_email_key UNIQUE (email)"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
