"""The ledger's recorded head per project, and each project's region and PUE.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Two new tables, nothing altered: ``ledger_entry`` keeps its table (and so its append-only
triggers, which a SQLite table rebuild would silently drop).

* ``ledger_head`` — the last seq and hash of each project's chain; appends lock it, and
  ``audit verify`` compares it with the chain (`db.models.LedgerHead`). Existing chains get
  their newest entry as head.
* ``project_accounting`` — the grid region and PUE a project's figures are derived with,
  configured explicitly (`db.models.ProjectAccounting`).

Application types are spelled as the plain types they store, as in 0001.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def _utc(name: str) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _check(sql: str, name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(sql, name=op.f(name))


def upgrade() -> None:
    op.create_table(
        "ledger_head",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        _utc("updated_at"),
        _check("length(hash) = 64", "ck_ledger_head_hash_sha256_hex"),
        _check("seq >= 0", "ck_ledger_head_seq_nonnegative"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["project.id"], name=op.f("fk_ledger_head_project_id_project")
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_ledger_head")),
    )
    # Chains that already exist (a database downgraded past this revision and upgraded
    # again) get their head from their newest entry, as it stands now.
    op.execute(
        "INSERT INTO ledger_head (project_id, seq, hash, updated_at) "
        "SELECT e.project_id, e.seq, e.hash, CURRENT_TIMESTAMP FROM ledger_entry e "
        "WHERE e.seq = (SELECT max(l.seq) FROM ledger_entry l WHERE l.project_id = e.project_id)"
    )
    op.create_table(
        "project_accounting",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("pue", sa.Double(), nullable=False),
        sa.Column("pue_name", sa.String(length=64), nullable=False),
        sa.Column("pue_kind", sa.String(length=16), nullable=False),
        sa.Column("pue_source", sa.String(length=500), nullable=False),
        sa.Column("pue_year", sa.Integer(), nullable=True),
        _utc("updated_at"),
        _check("length(region) >= 1", "ck_project_accounting_region_not_empty"),
        _check("pue >= 1 AND pue <= 1e300", "ck_project_accounting_pue_valid"),
        _check(
            "pue_kind IN ('published', 'survey', 'assumption', 'definition', 'measured')",
            "ck_project_accounting_pue_kind_valid",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_project_accounting_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_project_accounting")),
    )


def downgrade() -> None:
    op.drop_table("project_accounting")
    op.drop_table("ledger_head")
