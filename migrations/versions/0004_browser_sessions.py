"""Server-side browser sessions for the pages, bound to an API token and revocable.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-14

One table, ``browser_session`` (`db.models.BrowserSession`): the SHA-256 of a random session id
(the login cookie carries the id, never an API token), the token and project it was opened
with, its per-session CSRF secret, and when it was created, expires and was revoked. Deleting a
token or a project deletes its sessions. Types are spelled as the plain SQLAlchemy types they
store, as in 0001, so this file never changes when ``db`` does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

_BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "browser_session",
        sa.Column("id", _BIGINT_PK, nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("length(hash) = 64", name=op.f("ck_browser_session_hash_sha256_hex")),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_browser_session_expiry_after_creation")
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["api_token.id"],
            name=op.f("fk_browser_session_token_id_api_token"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_browser_session_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_browser_session")),
        sa.UniqueConstraint("hash", name=op.f("uq_browser_session_hash")),
    )
    op.create_index(
        op.f("ix_browser_session_expires_at"), "browser_session", ["expires_at"], unique=False
    )
    op.create_index(
        op.f("ix_browser_session_token_id"), "browser_session", ["token_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_browser_session_token_id"), table_name="browser_session")
    op.drop_index(op.f("ix_browser_session_expires_at"), table_name="browser_session")
    op.drop_table("browser_session")
