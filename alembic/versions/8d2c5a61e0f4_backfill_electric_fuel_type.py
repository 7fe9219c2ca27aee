"""backfill electric fuel_type

A data migration: the previous revision gave every existing car the default 'petrol';
cars of makes that only build electric cars are set to 'electric'. The downgrade
puts them back to the default, which is what they held before this revision.

Revision ID: 8d2c5a61e0f4
Revises: 4b1e7f3a9c20
Create Date: 2024-02-02 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "8d2c5a61e0f4"
down_revision: str | None = "4b1e7f3a9c20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ELECTRIC_MAKES = ("Tesla", "Polestar", "Rivian", "Lucid")


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE cars SET fuel_type = 'electric' WHERE make IN :makes AND fuel_type = 'petrol'"
        ).bindparams(sa.bindparam("makes", ELECTRIC_MAKES, expanding=True))
    )


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE cars SET fuel_type = 'petrol' WHERE make IN :makes AND fuel_type = 'electric'"
        ).bindparams(sa.bindparam("makes", ELECTRIC_MAKES, expanding=True))
    )
