"""an identity column, squawk's preferred spelling"""

from alembic import op

revision = "r22"
down_revision = "r21"

SQL = "ALTER TABLE events ADD COLUMN n bigint GENERATED ALWAYS AS IDENTITY"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
