"""add services

Revision ID: c3f9b7d21a58
Revises: 8d2c5a61e0f4
Create Date: 2024-03-05 10:00:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "c3f9b7d21a58"
down_revision: str | None = "8d2c5a61e0f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "services",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("car_id", sa.Integer(), nullable=False),
        sa.Column("serviced_on", sa.Date(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["car_id"], ["cars.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_services_car_id"), "services", ["car_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_services_car_id"), table_name="services")
    op.drop_table("services")
