"""accounts.email SET NOT NULL: ACCESS EXCLUSIVE, scans accounts"""

from alembic import op

revision = "p5"
down_revision = "p4"


def upgrade() -> None:
    op.execute("ALTER TABLE accounts ALTER COLUMN email SET NOT NULL")


def downgrade() -> None:
    op.execute("ALTER TABLE accounts ALTER COLUMN email DROP NOT NULL")
