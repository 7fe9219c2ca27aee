"""CREATE INDEX CONCURRENTLY in an autocommit block (squawk: prefer-robust-stmts)"""

from alembic import op

revision = "r33"
down_revision = "r32"

SQL = "CREATE INDEX CONCURRENTLY accounts_seen_at ON accounts (seen_at)"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
