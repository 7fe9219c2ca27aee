"""an enum value without BEFORE/AFTER (squawk: require-enum-value-ordering)"""

from alembic import op

revision = "r31"
down_revision = "r30"

SQL = "ALTER TYPE mood ADD VALUE 'calm'"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
