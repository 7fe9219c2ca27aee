"""a nullable column without a default: ACCESS EXCLUSIVE, but the catalog only"""

from alembic import op

revision = "p6"
down_revision = "p5"


def upgrade() -> None:
    op.execute("ALTER TABLE accounts ADD COLUMN nickname text")


def downgrade() -> None:
    op.execute("ALTER TABLE accounts DROP COLUMN nickname")
