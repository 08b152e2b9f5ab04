"""A passage found by a search: a chunk's text, the document it is from, its score and
metadata; what the retriever returns, the reranker rescores and answers cite."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Passage:
    id: str
    document_id: str
    text: str
    score: float
    metadata: dict[str, Any]

    def as_source(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "document_id": self.document_id,
            "text": self.text,
            "score": round(self.score, 6),
            "metadata": self.metadata,
        }

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> Passage:
        """A passage as an answer's stored `sources` hold it."""
        return cls(
            id=str(source.get("id", "")),
            document_id=str(source.get("document_id", "")),
            text=str(source.get("text", "")),
            score=float(source.get("score", 0.0)),
            metadata=dict(source.get("metadata") or {}),
        )
