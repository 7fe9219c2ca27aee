"""DETACH PARTITION (squawk: require-concurrent-partition-detach)"""

from alembic import op

revision = "r30"
down_revision = "r29"

SQL = "ALTER TABLE measurements DETACH PARTITION measurements_2024"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
