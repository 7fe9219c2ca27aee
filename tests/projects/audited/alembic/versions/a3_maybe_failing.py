"""maybe failing"""

import os

from alembic import op

revision = "a3a3a3a3a3a3"
down_revision = "a2a2a2a2a2a2"


def upgrade() -> None:
    op.execute("CREATE TABLE third (id int)")
    if os.environ.get("SAMPLE_FAIL"):
        op.execute("SELECT * FROM no_such_table")
    op.execute("INSERT INTO applied (revision) VALUES ('a3a3a3a3a3a3')")


def downgrade() -> None:
    op.execute("DELETE FROM applied WHERE revision = 'a3a3a3a3a3a3'")
    op.execute("DROP TABLE third")
