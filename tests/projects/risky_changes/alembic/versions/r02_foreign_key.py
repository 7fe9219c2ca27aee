"""a validated foreign key (squawk: adding-foreign-key-constraint)"""

from alembic import op

revision = "r02"
down_revision = "r01"

SQL = (
    "ALTER TABLE accounts ADD CONSTRAINT accounts_owner FOREIGN KEY (owner_id) "
    "REFERENCES owners (id)"
)


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    raise NotImplementedError("upgrade only: a test project for the safety report")
