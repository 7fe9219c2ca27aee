"""a bigserial column (squawk: prefer-identity)"""

from alembic import op

revision = "r21"
down_revision = "r20"

SQL = "ALTER TABLE events ADD COLUMN seq bigserial"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
