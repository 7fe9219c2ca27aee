"""CONCURRENTLY in the transaction (squawk: ban-concurrent-index-creation-in-transaction)"""

from alembic import op

revision = "r37"
down_revision = "r36"

SQL = "CREATE INDEX CONCURRENTLY accounts_plan ON accounts (plan)"


def upgrade() -> None:
    op.execute(SQL)  # PostgreSQL refuses it inside a transaction block


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
