"""add cars.color, copied from colour

The pre phase: safe while the old release runs (it neither reads nor writes `color`).

Revision ID: 5e1f0a2b7c39
Revises: c3f9b7d21a58
Create Date: 2026-12-06 09:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5e1f0a2b7c39"
down_revision: str | None = "c3f9b7d21a58"
branch_labels: str | Sequence[str] | None = ("pre",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("cars", sa.Column("color", sa.String(), nullable=True))
    op.execute("UPDATE cars SET color = colour")


def downgrade() -> None:
    op.drop_column("cars", "color")
