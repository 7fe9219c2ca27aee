"""a domain with a CHECK (squawk: ban-create-domain-with-constraint)"""

from alembic import op

revision = "r32"
down_revision = "r31"

SQL = "CREATE DOMAIN positive_int AS int CHECK (VALUE > 0)"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
