"""two"""

from alembic import op

revision = "bbb222"
down_revision = "aaa111"


def upgrade() -> None:
    op.execute("CREATE TABLE t_bbb222 (id int)")


def downgrade() -> None:
    op.execute("DROP TABLE t_bbb222")
