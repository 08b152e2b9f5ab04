"""answers saved while they stream: who writes them and when they last did

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        # The replica generating a `streaming` answer, and its last heartbeat.
        batch.add_column(sa.Column("instance", sa.String(200), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    # The sweep looks only at answers still streaming: a small partial index.
    op.create_index(
        "ix_messages_streaming",
        "messages",
        ["updated_at"],
        postgresql_where=sa.text("status = 'streaming'"),
        sqlite_where=sa.text("status = 'streaming'"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_streaming", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("instance")
