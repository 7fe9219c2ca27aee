"""drop cars.colour

The post phase: only once no pod of the old release, which reads `colour`, is left. First it
copies what the old release wrote during the rollout.

Revision ID: 9a4d6c8e2f15
Revises: c3f9b7d21a58
Create Date: 2026-12-06 09:01:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "9a4d6c8e2f15"
down_revision: str | None = "c3f9b7d21a58"
branch_labels: str | Sequence[str] | None = ("post",)
depends_on: str | Sequence[str] | None = "5e1f0a2b7c39"


def upgrade() -> None:
    op.execute("UPDATE cars SET color = colour WHERE color IS NULL")
    op.drop_column("cars", "colour")


def downgrade() -> None:
    op.add_column("cars", sa.Column("colour", sa.String(), nullable=True))
    op.execute("UPDATE cars SET colour = color")
