"""What the energy decomposition reads: memory activity per chunk, quietest power per device.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

``chunk.mem_busy_frac`` (nullable): the time-weighted fraction of the chunk during which the
device's memory was being read or written, from the meter's memory-activity readings (NVML
``utilization.memory``, AMD SMI ``umc_activity``), in [0, 1]; NULL where the meter had none,
which is every chunk stored before this revision. Added in place, with its CHECK on the column
(SQLite adds such a column without rebuilding the table).

``device_total`` (O(devices) rows, rebuilt in batch mode on SQLite) keeps what reports read
instead of the chunks (`db.totals`): ``quiet_power_w`` / ``quiet_power_high_w``, the lowest mean
power of a sustained chunk (at least 1.5 s, no gap, no counter reset, not an estimate, bounded
above) and that chunk's band top over its length (ties: the lower top), and ``mem_busy_s`` /
``mem_observed_s``, the memory-busy seconds and the seconds of the chunks carrying the counter.
Existing rows are filled from their chunks here, by the same rule the service applies on
ingest, so ``db.totals.rebuild_totals`` finds them equal; no stored chunk has memory activity,
so both sums start at 0. The 1.5 s window is `accounting.decomposition.SUSTAINED_WINDOW_S` as
of this revision, written out so this file never changes when the code does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_WINDOW_S = 1.5
_UNBOUNDED_J = 1e300
_QUIET = (
    "SELECT {value} FROM chunk AS c "
    "WHERE c.run_id = device_total.run_id AND c.device_id = device_total.device_id "
    f"AND c.t1_s - c.t0_s >= {_WINDOW_S} AND c.gap_count = 0 AND c.reset_count = 0 "
    "AND c.method <> 'estimate' "
    f"AND c.energy_j + c.sensor_uncertainty_j + c.bound_above_j < {_UNBOUNDED_J} "
    "ORDER BY c.energy_j / (c.t1_s - c.t0_s), "
    "(c.energy_j + c.sensor_uncertainty_j + c.bound_above_j) / (c.t1_s - c.t0_s) "
    "LIMIT 1"
)


def upgrade() -> None:
    op.add_column(
        "chunk",
        sa.Column(
            "mem_busy_frac",
            sa.Double(),
            sa.CheckConstraint(
                "mem_busy_frac IS NULL OR (mem_busy_frac >= 0 AND mem_busy_frac <= 1)",
                name=op.f("ck_chunk_mem_busy_frac_valid"),
            ),
            nullable=True,
        ),
    )
    with op.batch_alter_table("device_total") as batch:
        batch.add_column(sa.Column("quiet_power_w", sa.Double(), nullable=True))
        batch.add_column(sa.Column("quiet_power_high_w", sa.Double(), nullable=True))
        batch.add_column(
            sa.Column("mem_busy_s", sa.Double(), nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("mem_observed_s", sa.Double(), nullable=False, server_default=sa.text("0"))
        )
    op.execute(
        "UPDATE device_total SET "
        f"quiet_power_w = ({_QUIET.format(value='c.energy_j / (c.t1_s - c.t0_s)')}), "
        "quiet_power_high_w = ("
        + _QUIET.format(
            value="(c.energy_j + c.sensor_uncertainty_j + c.bound_above_j) / (c.t1_s - c.t0_s)"
        )
        + ")"
    )
    with op.batch_alter_table("device_total") as batch:
        batch.create_check_constraint(
            op.f("ck_device_total_quiet_power_valid"),
            "(quiet_power_w IS NULL) = (quiet_power_high_w IS NULL) "
            "AND (quiet_power_w IS NULL OR (quiet_power_w >= 0 "
            "AND quiet_power_w <= quiet_power_high_w AND quiet_power_high_w <= 1e+300))",
        )
        batch.create_check_constraint(
            op.f("ck_device_total_mem_activity_valid"),
            "mem_busy_s >= 0 AND mem_busy_s <= mem_observed_s AND mem_observed_s <= 1e+300",
        )


def downgrade() -> None:
    with op.batch_alter_table("device_total") as batch:
        batch.drop_constraint(op.f("ck_device_total_mem_activity_valid"), type_="check")
        batch.drop_constraint(op.f("ck_device_total_quiet_power_valid"), type_="check")
        batch.drop_column("mem_observed_s")
        batch.drop_column("mem_busy_s")
        batch.drop_column("quiet_power_high_w")
        batch.drop_column("quiet_power_w")
    op.drop_column("chunk", "mem_busy_frac")
