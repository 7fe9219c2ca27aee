"""one"""

from alembic import op

revision = "bbb111"
down_revision = "aaa111"


def upgrade() -> None:
    op.execute("CREATE TABLE t_bbb111 (id int)")


def downgrade() -> None:
    op.execute("DROP TABLE t_bbb111")
