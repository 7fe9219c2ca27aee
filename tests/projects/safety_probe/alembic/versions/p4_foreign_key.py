"""a validated foreign key: SHARE ROW EXCLUSIVE on both tables, scans accounts"""

from alembic import op

revision = "p4"
down_revision = "p3"


def upgrade() -> None:
    op.execute(
        "ALTER TABLE accounts ADD CONSTRAINT accounts_owner FOREIGN KEY (owner_id) "
        "REFERENCES owners (id)"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE accounts DROP CONSTRAINT accounts_owner")
