"""Optional reranking: a sentence-transformers cross-encoder reads the query with each of
the first `candidates` passages and rescores them; the rest keep their order after them.
Off unless RERANKER_MODEL names a model folder (production: one from the Hub, such as
cross-encoder/ms-marco-MiniLM-L-6-v2, downloaded beforehand)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio.to_thread

from backend.retrieval.passage import Passage

log = logging.getLogger(__name__)


class RerankerError(RuntimeError):
    """The reranker named in the settings cannot be loaded."""


class Reranker:
    def __init__(self, model: Any, *, candidates: int, batch_size: int = 32) -> None:
        self.model = model
        self.candidates = candidates
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: str | Path, *, candidates: int) -> Reranker:
        path = Path(folder)
        if not (path / "config.json").is_file():
            raise RerankerError(
                f"RERANKER_MODEL {str(path)!r} is not a model folder (no config.json there); "
                "save a sentence-transformers CrossEncoder there first"
            )
        from sentence_transformers import CrossEncoder

        try:
            model = CrossEncoder(str(path), device="cpu", local_files_only=True)
        except Exception as exc:
            raise RerankerError(f"RERANKER_MODEL {str(path)!r} could not be loaded: {exc}") from exc
        return cls(model, candidates=candidates)

    def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        """The cross-encoder's relevance of each text to the query (through the model's own
        activation: a sigmoid, so in [0, 1], for the usual one-label rerankers)."""
        raw = self.model.predict(
            [(query, text) for text in texts],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(s) for s in raw.reshape(len(texts), -1)[:, -1]]

    async def rerank(self, query: str, passages: Sequence[Passage]) -> list[Passage]:
        head, tail = list(passages[: self.candidates]), list(passages[self.candidates :])
        scores = await anyio.to_thread.run_sync(self.scores, query, [p.text for p in head])
        rescored = [replace(p, score=s) for p, s in zip(head, scores, strict=True)]
        rescored.sort(key=lambda p: -p.score)
        # What was not rescored follows, below every rescored passage.
        floor = min((p.score for p in rescored), default=0.0)
        return rescored + [replace(p, score=min(p.score, floor)) for p in tail]
