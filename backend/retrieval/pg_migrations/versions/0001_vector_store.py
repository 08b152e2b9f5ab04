"""The pgvector store: records (dense vector, metadata as jsonb, by namespace) and the
keyword side as postings (namespace, token, record, BM25 weight).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    dimension = int(context.config.attributes["dimension"])
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    # Ids in the C collation: ordered by code point (as Python orders the ties), and a
    # prefix (`list_ids`) is a range of the primary key.
    op.execute(
        f"""
        CREATE TABLE vector_records (
            namespace text NOT NULL,
            id text COLLATE "C" NOT NULL,
            dense vector({dimension}) NOT NULL,
            metadata jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (namespace, id)
        )
        """
    )
    op.execute(
        "CREATE INDEX vector_records_dense ON vector_records "
        "USING hnsw (dense vector_ip_ops) WITH (m = 16, ef_construction = 64)"
    )
    op.execute("CREATE INDEX vector_records_metadata ON vector_records USING gin (metadata)")
    op.execute(
        """
        CREATE TABLE vector_terms (
            namespace text NOT NULL,
            token bigint NOT NULL,
            id text COLLATE "C" NOT NULL,
            weight real NOT NULL,
            PRIMARY KEY (namespace, token, id),
            FOREIGN KEY (namespace, id) REFERENCES vector_records ON DELETE CASCADE
        )
        """
    )
    op.execute("CREATE INDEX vector_terms_record ON vector_terms (namespace, id)")


def downgrade() -> None:
    op.execute("DROP TABLE vector_terms")
    op.execute("DROP TABLE vector_records")
