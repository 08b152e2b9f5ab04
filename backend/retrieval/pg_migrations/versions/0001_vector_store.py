"""The pgvector store: records (dense vector, BM25 weights as sparsevec, metadata as jsonb,
by namespace), the vocabulary numbering token ids for sparsevec, keyword postings.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import context, op

from backend.retrieval.postgres_store import DENSE_INDEX

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
    op.execute(DENSE_INDEX)
    op.execute("CREATE INDEX vector_records_metadata ON vector_records USING gin (metadata)")
    # The keyword side: each record's BM25 weights as a sparsevec, its indices given by
    # the vocabulary (our token ids are 32-bit hashes; sparsevec's indices stop at 10^9),
    # and postings ordered by weight, where the HNSW path finds keyword candidates.
    op.execute(
        "CREATE TABLE vector_vocabulary "
        "(token bigint PRIMARY KEY, idx integer GENERATED ALWAYS AS IDENTITY UNIQUE)"
    )
    op.execute("ALTER TABLE vector_records ADD COLUMN sparse sparsevec(1000000000)")
    op.execute(
        """
        CREATE TABLE vector_postings (
            namespace text NOT NULL,
            idx integer NOT NULL,
            weight real NOT NULL,
            id text COLLATE "C" NOT NULL,
            FOREIGN KEY (namespace, id) REFERENCES vector_records ON DELETE CASCADE
        )
        """
    )
    op.execute(
        "CREATE INDEX vector_postings_impact ON vector_postings (namespace, idx, weight DESC)"
    )
    op.execute("CREATE INDEX vector_postings_record ON vector_postings (namespace, id)")


def downgrade() -> None:
    op.execute("DROP TABLE vector_postings")
    op.execute("DROP TABLE vector_records")
    op.execute("DROP TABLE vector_vocabulary")
