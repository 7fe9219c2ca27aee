"""a CHECK added NOT VALID: the safe first step"""

from alembic import op

revision = "r04"
down_revision = "r03"

SQL = (
    "ALTER TABLE accounts ADD CONSTRAINT accounts_email_present CHECK (email IS NOT NULL) NOT VALID"
)


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
