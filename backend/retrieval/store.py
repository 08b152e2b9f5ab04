"""The vector store interface: Pinecone's data model (records with dense values, sparse
values and metadata, in namespaces) and its query semantics (dot product, exact filters)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from backend.retrieval.bm25 import SparseVector
from backend.retrieval.filters import Filter


class DimensionMismatch(RuntimeError):
    """A store holds vectors of another dimension than the embedding model (or the copy's
    source) makes."""

    def __init__(self, where: str, held: int, wanted: int) -> None:
        super().__init__(
            f"{where} holds {held}-d vectors but the embedding model makes {wanted}-d ones; "
            "use another store or re-ingest"
        )
        self.held = held
        self.wanted = wanted


@dataclass
class Record:
    id: str
    values: list[float]
    sparse: SparseVector | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Match:
    id: str
    score: float
    metadata: dict[str, Any]


class VectorStore(Protocol):
    """Scores are `dense · vector + sparse · sparse_vector` (Pinecone's `dotproduct`); a
    missing `vector` or `sparse` contributes nothing. Ties are broken by id, ascending."""

    dimension: int

    async def upsert(self, records: Sequence[Record], *, namespace: str) -> None: ...

    async def query(
        self,
        *,
        namespace: str,
        vector: list[float] | None,
        sparse: SparseVector | None,
        top_k: int,
        filter_: Filter | None = None,
    ) -> list[Match]: ...

    async def delete(self, ids: Sequence[str], *, namespace: str) -> None: ...

    async def list_ids(self, *, prefix: str, namespace: str) -> list[str]: ...

    async def count(self, *, namespace: str) -> int: ...

    async def close(self) -> None: ...


def rank(matches: list[Match], top_k: int) -> list[Match]:
    """Best first, ties by id: the one ordering every store and merge uses."""
    return sorted(matches, key=lambda m: (-m.score, m.id))[:top_k]
