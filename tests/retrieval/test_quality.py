"""Retrieval quality on the shared PubMedQA set, through the real ingestion and search path
with the real embedding model: hybrid must beat both dense-only and keyword-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.evaluation import evaluate

DATASET = Path(
    os.environ.get(
        "RAGSTREAM_EVAL_DIR", Path(__file__).resolve().parents[3] / "shared" / "eval" / "pubmedqa"
    )
)

pytestmark = pytest.mark.skipif(
    not (DATASET / "corpus.jsonl").is_file(),
    reason=f"the shared evaluation set is not at {DATASET} (set RAGSTREAM_EVAL_DIR)",
)


async def test_hybrid_beats_dense_and_keyword_on_pubmedqa() -> None:
    report = await evaluate(
        DATASET,
        alphas=[0.5],
        fusions=["convex", "minmax"],
        corpus_limit=1200,
        query_limit=200,
        quiet=True,
    )
    rows = {(r["method"], r["alpha"]): r for r in report["rows"]}
    keyword = rows[("keyword (BM25)", 0.0)]["ndcg@10"]
    dense = rows[("dense", 1.0)]["ndcg@10"]
    hybrid = rows[("hybrid convex", 0.5)]["ndcg@10"]
    assert hybrid > max(keyword, dense), report["rows"]
    assert rows[("hybrid minmax", 0.5)]["ndcg@10"] > max(keyword, dense)
    # Sanity floors well below what the full set measures (docs/retrieval.md).
    assert keyword > 0.6
    assert dense > 0.6
    assert report["filter_violations"] == 0
