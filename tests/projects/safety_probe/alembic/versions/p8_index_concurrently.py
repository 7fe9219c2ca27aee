"""index accounts.owner_id CONCURRENTLY in an autocommit block: writes go on"""

from alembic import op

revision = "p8"
down_revision = "p7"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("CREATE INDEX CONCURRENTLY accounts_owner_id ON accounts (owner_id)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY accounts_owner_id")
