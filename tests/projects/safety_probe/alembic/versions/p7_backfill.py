"""a backfill of every row in one transaction: ROW EXCLUSIVE, row locks until commit"""

from alembic import op

revision = "p7"
down_revision = "p6"


def upgrade() -> None:
    op.execute("UPDATE accounts SET note = 'migrated'")


def downgrade() -> None:
    op.execute("UPDATE accounts SET note = NULL")
