"""a primary key on a table with rows (squawk: adding-serial-primary-key-field)"""

from alembic import op

revision = "r09"
down_revision = "r08"

SQL = "ALTER TABLE events ADD PRIMARY KEY (id)"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
