"""base"""

from alembic import op

revision = "aaa111"
down_revision = None


def upgrade() -> None:
    op.execute("CREATE TABLE t_aaa111 (id int)")


def downgrade() -> None:
    op.execute("DROP TABLE t_aaa111")
