"""conversation turns: the query a follow-up searched for, revisions of an answer with the
user's written feedback, and the branch a user chose to continue

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        # The search query an answer's sources were found for (a follow-up's standalone one).
        batch.add_column(sa.Column("search_query", sa.Text(), nullable=True))
        # A revision: the answer it revises (a sibling), and what the user asked to change.
        batch.add_column(sa.Column("revision_of", sa.String(36), nullable=True))
        batch.add_column(sa.Column("revision_feedback", sa.Text(), nullable=True))
    with op.batch_alter_table("conversations") as batch:
        # The message whose branch the user chose (PUT /conversations/{id}/branch); NULL:
        # the newest message's. A new message clears it.
        batch.add_column(sa.Column("active_message_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("active_message_id")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("revision_feedback")
        batch.drop_column("revision_of")
        batch.drop_column("search_query")
