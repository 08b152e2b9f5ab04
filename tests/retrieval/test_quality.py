"""Retrieval quality on the shared PubMedQA set, through the real ingestion and search path
with the real embedding model: hybrid must beat both dense-only and keyword-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backend.cli.evaluation import evaluate, read_split

DATASET = Path(
    os.environ.get(
        "RAGSTREAM_EVAL_DIR", Path(__file__).resolve().parents[3] / "shared" / "eval" / "pubmedqa"
    )
)

needs_dataset = pytest.mark.skipif(
    not (DATASET / "corpus.jsonl").is_file(),
    reason=f"the shared evaluation set is not at {DATASET} (set RAGSTREAM_EVAL_DIR)",
)


def test_the_dev_split_is_made_of_training_questions_only(tmp_path: Path) -> None:
    qrels = tmp_path / "qrels"
    qrels.mkdir()
    header = "query-id\tcorpus-id\tscore\n"
    (qrels / "all.tsv").write_text(header + "q1\td1\t1\nq2\td2\t1\nq2\td3\t1\nq3\td4\t0\n")
    (qrels / "test.tsv").write_text(header + "q1\td1\t1\n")
    assert read_split(tmp_path, "dev") == {"q2": {"d2", "d3"}}
    assert read_split(tmp_path, "test") == {"q1": {"d1"}}
    (qrels / "train.tsv").write_text(header + "q3\td4\t1\n")
    assert read_split(tmp_path, "dev") == {"q3": {"d4"}}  # a train split is the dev split
    with pytest.raises(SystemExit, match=r"no split 'valid'.*splits: all, test, train"):
        read_split(tmp_path, "valid")


@needs_dataset
async def test_hybrid_beats_dense_and_keyword_on_pubmedqa() -> None:
    report = await evaluate(
        DATASET,
        split="dev",  # the training questions: the test split is reported, never tuned on
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
    # Grouped by document, top 10 documents do at least as well as the documents of 10 chunks.
    assert (
        rows[("hybrid convex", 0.5)]["ndcg@10"] >= rows[("hybrid convex", 0.5)]["ndcg@10 ungrouped"]
    )
