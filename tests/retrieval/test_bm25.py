from __future__ import annotations

import hashlib
import math

import pytest

from backend.retrieval.bm25 import BM25Encoder, CorpusDelta, token_id


def test_query_dot_document_is_the_okapi_bm25_score() -> None:
    corpus = [
        "Mitochondria drive programmed cell death in plants.",
        "Cell death in the lace plant leaves.",
        "Visual acuity charts compared in amblyopia.",
    ]
    encoder = BM25Encoder(k1=1.2, b=0.75)
    counts = [encoder.term_counts(text) for text in corpus]
    encoder.apply(CorpusDelta.of(counts))
    query = encoder.encode_query("cell death in plants")
    avg = sum(c.length for c in counts) / len(counts)
    for doc_counts in counts:
        doc = encoder.encode_document(doc_counts)
        weights = dict(zip(doc.indices, doc.values, strict=True))
        dot = sum(w * weights.get(t, 0.0) for t, w in zip(query.indices, query.values, strict=True))
        expected = 0.0
        for tid in set(query.indices):
            tf = doc_counts.counts.get(tid, 0)
            df = encoder.stats.doc_freq[tid]
            idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
            expected += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * doc_counts.length / avg))
        assert dot == pytest.approx(expected)


def test_stemming_stopwords_and_stable_ids() -> None:
    encoder = BM25Encoder()
    assert encoder.analyzer.tokens("The cells were dying; the cell died.") == [
        "cell",
        "die",
        "cell",
        "die",
    ]
    counts = encoder.term_counts("The cells were dying; the cell died.")
    assert counts.length == 4
    assert counts.counts == {token_id("cell"): 2, token_id("die"): 2}
    # Fixed by the algorithm, not by the process (no PYTHONHASHSEED): the same everywhere.
    assert token_id("cell") == int.from_bytes(
        hashlib.blake2b(b"cell", digest_size=4).digest(), "big"
    )


def test_statistics_come_and_go_with_documents() -> None:
    encoder = BM25Encoder()
    a = CorpusDelta.of([encoder.term_counts("alpha beta"), encoder.term_counts("beta gamma")])
    b = CorpusDelta.of([encoder.term_counts("gamma delta")])
    encoder.apply(a)
    encoder.apply(b)
    assert encoder.stats.doc_count == 3
    assert encoder.stats.doc_freq[token_id("gamma")] == 2
    encoder.apply(a, -1)
    assert encoder.stats.doc_count == 1
    assert encoder.stats.total_length == 2
    assert token_id("alpha") not in encoder.stats.doc_freq
    assert encoder.encode_query("alpha").indices == []  # unknown terms add nothing
    assert CorpusDelta.from_json(b.to_json()) == b
