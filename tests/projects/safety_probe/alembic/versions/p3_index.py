"""index accounts.email without CONCURRENTLY: SHARE, blocks writes"""

from alembic import op

revision = "p3"
down_revision = "p2"


def upgrade() -> None:
    op.execute("CREATE INDEX accounts_email ON accounts (email)")


def downgrade() -> None:
    op.execute("DROP INDEX accounts_email")
