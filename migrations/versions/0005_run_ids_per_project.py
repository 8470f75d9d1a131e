"""A run is identified within its project.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Run ids are made by clients, and many are predictable (``uuid5`` of a Slurm job id). While
they were unique across the service, one project could register another project's id first:
the owner's meter then got 409 forever, and the 409 told the squatter that the id existed.

New column ``run.client_id``: the id the project's clients use, unique per project
(``uq_run_project_id_client_id``). ``run.id`` stays the database key that every other table
references; it equals ``client_id`` except for a run whose id another project's run already
holds (``db.runs.run_key``). The runs already stored take their key as their ``client_id``, so
no reference, ledger hash or URL changes. Downgrading is refused once two projects share a
client id (the old schema cannot hold both runs under one id).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    with op.batch_alter_table("run") as batch:
        batch.add_column(sa.Column("client_id", sa.Uuid(), nullable=True))
    op.execute("UPDATE run SET client_id = id")
    with op.batch_alter_table("run") as batch:
        batch.alter_column("client_id", existing_type=sa.Uuid(), nullable=False)
        batch.create_unique_constraint("uq_run_project_id_client_id", ["project_id", "client_id"])


def downgrade() -> None:
    bind = op.get_bind()
    moved = bind.execute(sa.text("SELECT count(*) FROM run WHERE id <> client_id")).scalar_one()
    if moved:
        raise CommandError(
            f"{moved} run(s) share their id with another project's run; "
            "the schema before 0005 cannot hold them: downgrade refused"
        )
    with op.batch_alter_table("run") as batch:
        batch.drop_constraint("uq_run_project_id_client_id", type_="unique")
        batch.drop_column("client_id")
