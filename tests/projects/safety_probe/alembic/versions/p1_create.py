"""create accounts and owners"""

from alembic import op

revision = "p1"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE owners (id int PRIMARY KEY)")
    op.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner_id int, email text, note text)")


def downgrade() -> None:
    op.execute("DROP TABLE accounts")
    op.execute("DROP TABLE owners")
