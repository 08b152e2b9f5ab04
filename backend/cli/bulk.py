"""Bulk ingestion on Ray (`python -m backend.cli ingest PATH --ray [--address ADDRESS]`).

A Ray Data pipeline: the documents are read here, those already stored as they are are
left out, and the rest flow through chunking (tasks) and embedding (a pool of actors,
each loading the embedding model once) on every node of the cluster; their vectors come
back here and enter the knowledge base through `DocumentService.ingest_batches`, the
API's own path, so ids, chunking, deduplication, the BM25 statistics and the stores are
exactly the API's and a re-run changes nothing. Ray is optional: requirements-ray.txt."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from backend.retrieval.chunking import chunk_text
from backend.services.ingestion import NewDocument, contextual_texts

RAY_MISSING = "--ray needs Ray: `.venv/bin/pip install -r requirements-ray.txt`"


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # Ray Data ships as an extra of ray
    except ImportError as exc:
        raise SystemExit(f"{RAY_MISSING} ({exc})") from None
    return ray


class _Chunker:
    """Each document's chunks as the encoders read them (the API's chunking)."""

    def __init__(self, chunk_size: int, overlap: int, contextual: bool) -> None:
        self.size, self.overlap, self.contextual = chunk_size, overlap, contextual

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = []
        for raw in batch["document"]:
            document = NewDocument.from_json(raw)
            chunks = chunk_text(document.text, size=self.size, overlap=self.overlap)
            texts.append(
                contextual_texts(document, chunks) if self.contextual else [c.text for c in chunks]
            )
        return {"document": batch["document"], "texts": texts}


class _Embedder:
    """An actor holding the embedding model: chunk texts in, vectors out."""

    def __init__(self, settings: dict[str, Any]) -> None:
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        from backend.common.settings import Settings
        from backend.retrieval.embeddings import build_embeddings

        self.embeddings, _ = build_embeddings(Settings(_env_file=None, **settings))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        per_document = [list(texts) for texts in batch["texts"]]
        flat = [text for texts in per_document for text in texts]
        vectors = self.embeddings.embed_documents(flat) if flat else []
        out, position = [], 0
        for texts in per_document:
            out.append(vectors[position : position + len(texts)])
            position += len(texts)
        return {"document": batch["document"], "texts": per_document, "vectors": out}


class RayEmbedded:
    """Batches of documents whose chunk vectors were made on Ray, and `embed`, which
    hands `ingest_batches` those vectors for the batch it is embedding."""

    def __init__(self) -> None:
        self._vectors: dict[str, list[float]] = {}

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [self._vectors[text] for text in texts]

    def batches(
        self,
        documents: Sequence[NewDocument],
        *,
        settings: Any,
        workers: int,
        batch_size: int,
        address: str | None = None,
    ) -> Iterator[list[NewDocument]]:
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        # Documents are stored in the order read, as the API stores a request's.
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        model = {
            "embedding_model": settings.embedding_model,
            "embedding_batch_size": settings.embedding_batch_size,
        }
        dataset = (
            ray.data.from_items([{"document": d.to_json()} for d in documents])
            .map_batches(
                _Chunker,
                fn_constructor_args=(
                    settings.chunk_size,
                    settings.chunk_overlap,
                    settings.contextual_chunks,
                ),
                batch_size=batch_size,
                concurrency=1,
            )
            .map_batches(
                _Embedder,
                fn_constructor_args=(model,),
                batch_size=batch_size,
                concurrency=workers,
                num_cpus=1,
            )
        )
        for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"):
            self._vectors = {
                text: [float(v) for v in vector]
                for texts, vectors in zip(batch["texts"], batch["vectors"], strict=True)
                for text, vector in zip(texts, vectors, strict=True)
            }
            yield [NewDocument.from_json(raw) for raw in batch["document"]]
