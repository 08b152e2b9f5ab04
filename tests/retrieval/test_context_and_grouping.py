"""Contextual chunk text (title and headings for the encoders) and results grouped by
document."""

from __future__ import annotations

from backend.retrieval.chunking import chunk_text
from backend.retrieval.passage import Passage
from backend.retrieval.retriever import group_by_document
from backend.services.ingestion import NewDocument, contextual_texts


def test_every_chunk_is_read_with_its_title_and_headings() -> None:
    body = "Glaciers retreat as the climate warms. " * 30
    text = f"# Ice\n\n## Alpine glaciers\n\n{body}\n\n## Polar caps\n\n{body}"
    document = NewDocument(text=text, metadata={"title": "A survey of ice"})
    chunks = chunk_text(text, size=400, overlap=50)
    texts = contextual_texts(document, chunks)
    assert len(texts) == len(chunks) > 4
    assert texts[0] == "A survey of ice\n" + chunks[0].text  # its own headings: in its text
    last = texts[-1]
    assert last.startswith("A survey of ice\nIce\nPolar caps\n"), last[:80]
    assert last.endswith(chunks[-1].text)
    polar = text.index("## Polar")
    under_alpine = [t for c, t in zip(chunks, texts, strict=True) if 40 < c.start < polar - 400]
    assert under_alpine
    assert all(t.startswith("A survey of ice\nIce\nAlpine glaciers\n") for t in under_alpine)


def test_a_chunk_that_begins_with_its_title_is_left_as_it_is() -> None:
    document = NewDocument(
        text="Syncope\n\nBathing syncope in infants.", metadata={"title": "Syncope"}
    )
    chunks = chunk_text(document.text, size=800, overlap=0)
    assert contextual_texts(document, chunks) == [chunks[0].text]
    untitled = NewDocument(text="Plain text, no headings.")
    assert contextual_texts(untitled, chunk_text(untitled.text, size=800, overlap=0)) == [
        "Plain text, no headings."
    ]


def _passage(document: str, index: int, score: float, start: int, text: str) -> Passage:
    return Passage(f"{document}#r#{index}", document, text, score, {"chunk_start": start})


def test_grouping_keeps_the_best_documents_and_merges_their_passages_in_reading_order() -> None:
    text = "abcdefghijklmnopqrstuvwxyz"
    ranked = [
        _passage("long", 3, 0.9, 15, text[15:25]),
        _passage("long", 1, 0.8, 5, text[5:17]),  # overlaps chunk 3 by two characters
        _passage("long", 0, 0.7, 0, text[0:7]),  # a third passage of "long": past per_document
        _passage("short", 0, 0.6, 0, "short text"),
        _passage("other", 0, 0.5, 0, "other text"),
        _passage("far", 0, 0.4, 0, "far"),
    ]
    grouped = group_by_document(ranked, top_k=3, per_document=2)
    assert [p.document_id for p in grouped] == ["long", "short", "other"]
    assert grouped[0].text == text[5:25]  # the shared "pq" once
    assert grouped[0].score == 0.9
    assert grouped[0].id == "long#r#3"
    assert grouped[1].text == "short text"
    apart = group_by_document(
        [_passage("d", 5, 0.9, 100, "later"), _passage("d", 0, 0.8, 0, "first")], 1, 2
    )
    assert apart[0].text == "first\n…\nlater"
