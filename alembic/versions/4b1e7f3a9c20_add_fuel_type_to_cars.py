"""add fuel_type to cars

A nullable column with a server default: PostgreSQL fills existing rows from the
default without rewriting the table, so this is safe on a large, live table.

Revision ID: 4b1e7f3a9c20
Revises: 0d25ea6c8183
Create Date: 2024-02-01 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "4b1e7f3a9c20"
down_revision: str | None = "0d25ea6c8183"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "cars",
        sa.Column(
            "fuel_type", sa.String(length=20), nullable=True, server_default=sa.text("'petrol'")
        ),
    )


def downgrade() -> None:
    op.drop_column("cars", "fuel_type")
