"""What reranking adds to a search: a cross-encoder of the usual production reranker's
shape (cross-encoder/ms-marco-MiniLM-L-6-v2: 6 layers, 384 wide) rescoring the first N
passages of real PubMedQA passages, beside the search it follows.

The Hub is out of reach here, so the cross-encoder is built from the bundled
all-MiniLM-L6-v2 encoder (the same architecture) with an untrained scoring head: its scores
mean nothing, its cost is the production model's. It is saved and loaded through
`Reranker.load`, the service's own path.

    .venv/bin/python -m bench.rerank_latency [--candidates 10,20,40] [--queries 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from backend.retrieval.embeddings import bundled_embedding_model_path
from backend.retrieval.passage import Passage
from backend.retrieval.rerank import Reranker

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval" / "pubmedqa"


def production_shaped_cross_encoder(folder: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = bundled_embedding_model_path()
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(
        str(source), num_labels=1, local_files_only=True
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(folder)
    return folder


def load_texts(limit: int) -> tuple[list[str], list[str]]:
    with (EVAL / "corpus.jsonl").open() as f:
        passages = [json.loads(line)["text"] for _, line in zip(range(limit), f, strict=False)]
    with (EVAL / "queries.jsonl").open() as f:
        queries = [json.loads(line)["text"] for line in f]
    return passages, queries


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    reranker: Reranker, queries: list[str], passages: list[str], n: int
) -> list[float]:
    times = []
    for i, query in enumerate(queries):
        head = [
            Passage(
                id=str(k),
                document_id=str(k),
                text=passages[(i * n + k) % len(passages)],
                score=1.0,
                metadata={},
            )
            for k in range(n)
        ]
        start = time.perf_counter()
        await reranker.rerank(query, head)
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="10,20,40")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    passages, queries = load_texts(2000)
    queries = queries[: args.queries]
    words = statistics.mean(len(p.split()) for p in passages)
    with tempfile.TemporaryDirectory() as tmp:
        folder = production_shaped_cross_encoder(Path(tmp) / "cross-encoder")
        sizes = [int(n) for n in args.candidates.split(",")]
        reranker = Reranker.load(folder, candidates=max(sizes))
        asyncio.run(measure(reranker, queries[:3], passages, 10))  # warm-up
        print(f"PubMedQA passages of {words:.0f} words on average, {len(queries)} queries")
        print("| candidates rescored | rerank p50 | rerank p99 |")
        print("|---|---|---|")
        for n in sizes:
            reranker.candidates = n
            times = asyncio.run(measure(reranker, queries, passages, n))
            p50, p99 = statistics.median(times), percentile(times, 0.99)
            print(f"| {n} | {p50:.0f} ms | {p99:.0f} ms |")


if __name__ == "__main__":
    main()
