"""Optional reranking with a sentence-transformers cross-encoder: a tiny one that the test
builds and saves itself, loaded through RERANKER_MODEL like a production one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from backend.retrieval.rerank import Reranker, RerankerError
from tests.helpers import Serve, register

WORDS = [
    "glaciers",
    "retreat",
    "ice",
    "sheets",
    "melt",
    "warming",
    "oceans",
    "rise",
    "coral",
    "reefs",
    "bleach",
    "forests",
    "burn",
]


def tiny_cross_encoder(folder: Path) -> Path:
    """A one-layer BERT cross-encoder with random weights and a word-level vocabulary."""
    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(vocab))
    config = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    config.num_labels = 1
    torch.manual_seed(7)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_folder_that_is_no_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RerankerError, match=r"no config\.json"):
        Reranker.load(tmp_path, candidates=5)


def test_the_first_candidates_are_rescored_by_the_cross_encoder(
    tmp_path: Path, serve: Serve
) -> None:
    folder = tiny_cross_encoder(tmp_path / "reranker")
    server = serve(reranker_model=str(folder), rerank_candidates=3)
    client = server.http
    headers = register(client)
    texts = [
        "glaciers retreat",
        "ice sheets melt glaciers",
        "oceans rise warming glaciers",
        "coral reefs bleach glaciers",
        "forests burn warming glaciers",
        "glaciers melt warming ice",
    ]
    documents = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    assert (
        client.post("/documents", json={"documents": documents}, headers=headers).status_code == 201
    )
    query = {"query": "glaciers warming", "alpha": 0, "top_k": 6, "group_by": "chunk"}
    response = client.post("/search", json=query, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "rerank_ms" in body["timings"]
    reranked = [r["document_id"] for r in body["results"]]

    # The same search without reranking, and the cross-encoder's own scores.
    retriever = server.components.documents.retriever
    retriever.reranker = None
    fused = [
        r["document_id"]
        for r in client.post("/search", json=query, headers=headers).json()["results"]
    ]
    assert sorted(fused) == sorted(reranked)
    assert len(fused) == 6
    by_id = dict(zip((d["id"] for d in documents), texts, strict=True))
    scores = CrossEncoder(str(folder), device="cpu").predict(
        [("glaciers warming", by_id[d]) for d in fused[:3]]
    )
    expected = [d for _, d in sorted(zip(scores, fused[:3], strict=True), key=lambda x: -x[0])]
    assert reranked[:3] == expected
    assert reranked[3:] == fused[3:]  # past RERANK_CANDIDATES: as fused, below the rescored
    results = body["results"]
    assert [r["score"] for r in results[:3]] == sorted(
        (r["score"] for r in results[:3]), reverse=True
    )
    assert results[3]["score"] <= results[2]["score"]
