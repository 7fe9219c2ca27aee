"""a CHECK on a domain in use (squawk: ban-alter-domain-with-add-constraint)"""

from alembic import op

revision = "r10"
down_revision = "r09"

SQL = "ALTER DOMAIN email_address ADD CONSTRAINT email_address_at CHECK (VALUE LIKE '%@%')"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
