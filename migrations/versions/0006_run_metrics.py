"""Quality metrics over a run (``eval_loss`` at a step), for energy-to-quality figures.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

One table, ``run_metric`` (`db.models.RunMetric`): per run, metric name and step, the value and
the meter-clock time ``t_s`` (unix seconds) at which the job recorded it. ``(run_id, name, step)``
is unique: it is the idempotency key of ``POST /runs/{run_id}/metrics``, and its index serves
the per-run reads. Deleting a run deletes its metrics. Types are spelled as the plain SQLAlchemy
types they store, as in 0001, so this file never changes when ``db`` does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "run_metric",
        sa.Column("id", _BIGINT_PK, nullable=False),
        sa.Column("run_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("t_s", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("length(name) >= 1", name=op.f("ck_run_metric_name_not_empty")),
        sa.CheckConstraint("step >= 0", name=op.f("ck_run_metric_step_nonnegative")),
        sa.CheckConstraint(
            "value >= -1e300 AND value <= 1e300", name=op.f("ck_run_metric_value_finite")
        ),
        sa.CheckConstraint("t_s >= 0 AND t_s <= 1e300", name=op.f("ck_run_metric_t_s_valid")),
        sa.ForeignKeyConstraint(
            ["run_id"], ["run.id"], name=op.f("fk_run_metric_run_id_run"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_metric")),
        sa.UniqueConstraint("run_id", "name", "step", name=op.f("uq_run_metric_run_id_name_step")),
    )


def downgrade() -> None:
    op.drop_table("run_metric")
