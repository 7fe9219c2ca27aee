"""create applied"""

from alembic import op

revision = "a1a1a1a1a1a1"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE applied (revision text NOT NULL, at timestamptz DEFAULT now())")
    op.execute("INSERT INTO applied (revision) VALUES ('a1a1a1a1a1a1')")


def downgrade() -> None:
    op.execute("DROP TABLE applied")
