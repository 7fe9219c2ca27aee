"""a validated CHECK (squawk: constraint-missing-not-valid)"""

from alembic import op

revision = "r03"
down_revision = "r02"

SQL = "ALTER TABLE accounts ADD CONSTRAINT accounts_note_short CHECK (length(note) < 1000)"


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
