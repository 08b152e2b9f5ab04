"""Turning documents into chunks."""

from __future__ import annotations

from dataclasses import dataclass

from langchain_text_splitters import RecursiveCharacterTextSplitter


@dataclass
class Chunk:
    index: int
    text: str
    start: int  # character offset in the document


def chunk_text(text: str, *, size: int, overlap: int) -> list[Chunk]:
    """Split on paragraphs, then lines, sentences and words, into chunks of at most `size`
    characters that overlap by up to `overlap`."""
    splitter = RecursiveCharacterTextSplitter(
        chunk_size=size,
        chunk_overlap=overlap,
        separators=["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""],
        keep_separator="end",
        add_start_index=True,
        strip_whitespace=True,
    )
    documents = splitter.create_documents([text])
    return [
        Chunk(index=i, text=d.page_content, start=int(d.metadata.get("start_index", 0)))
        for i, d in enumerate(documents)
        if d.page_content.strip()
    ]
