"""Each device says which other kinds on its host its figures already include.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

One column, ``device.covers``: the kinds (``cpu``, ``dram``, …, comma-separated; empty for
none) on the device's host whose energy the device's own figures include, as the meter
declared them (``DevicePayload.covers``; a GH200-class module covers its CPU). Reports, the
ledger and the runs list leave the devices so covered out of every total
(`thermoledger.accounting.integrate.covered_by`). Existing devices cover nothing, so no total
changes. Added in place (no table rebuild), with a server default for the rows already there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.add_column(
        "device",
        sa.Column("covers", sa.String(length=32), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_column("device", "covers")
