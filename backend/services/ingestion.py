"""Turning documents into the records the vector store keeps: identity (id, content hash,
revision), chunk ids, chunking, embedding and BM25 encoding. The API, the command-line
ingester and the bulk pipeline all go through these, so the same document always becomes
the same records."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from backend.common.errors import InvalidInput
from backend.db.models import Document
from backend.retrieval.bm25 import BM25Encoder, CorpusDelta, TermCounts
from backend.retrieval.chunking import Chunk
from backend.retrieval.retriever import DOCUMENT_KEY, TEXT_KEY
from backend.retrieval.store import Record

RESERVED_KEYS = frozenset({TEXT_KEY, DOCUMENT_KEY, "chunk_index", "chunk_start", "source"})
MAX_METADATA_BYTES = 8_192  # per document; each chunk adds its text (Pinecone: 40 KB a record)


def chunk_id(document_id: str, revision: str, index: int) -> str:
    """The vector-store id of a document revision's chunk number `index`."""
    return f"{document_id}#{revision}#{index}"


def stored_chunk_ids(document: Document) -> list[str]:
    """The ids of every chunk a stored document has in the vector store."""
    return [chunk_id(document.id, document.revision, i) for i in range(document.chunk_count)]


@dataclass
class NewDocument:
    """A document to ingest, as the API, the command line and the bulk pipeline hand it in:
    its text, your id (re-sending it replaces the document), metadata, where it came from."""

    text: str
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> NewDocument:
        return cls(**json.loads(raw))


@dataclass
class Identity:
    """Who a document is: its id (given, or derived from its text), the hash of its text,
    and a revision that changes with its text, metadata or source."""

    id: str
    content_hash: str
    revision: str

    @classmethod
    def of(cls, document: NewDocument) -> Identity:
        content_hash = hashlib.sha256(document.text.encode()).hexdigest()
        revision = hashlib.sha256(
            (
                content_hash
                + json.dumps(document.metadata, sort_keys=True)
                + (document.source or "")
            ).encode()
        ).hexdigest()[:12]
        return cls(document.id or f"doc-{content_hash[:24]}", content_hash, revision)


@dataclass
class Preparation:
    """One document on its way into the store: its chunks as records, what they add to
    the BM25 statistics, and the stored document it replaces (if any)."""

    document: NewDocument
    identity: Identity
    chunks: list[Chunk]
    old: Document | None
    # Filled in by `embed_chunks`, then `encode_records`:
    vectors: list[list[float]] = field(default_factory=list)
    counts: list[TermCounts] = field(default_factory=list)
    delta: CorpusDelta = field(default_factory=CorpusDelta)
    records: list[Record] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.identity.id


def check_metadata(metadata: Any, where: tuple[str | int, ...]) -> None:
    """Metadata Pinecone accepts, without the keys the service sets itself."""
    if not isinstance(metadata, dict):
        raise InvalidInput("metadata must be an object", field=where)
    for key, value in metadata.items():
        here = (*where, key)
        if not key or key.startswith("$"):
            raise InvalidInput("metadata keys must be non-empty and not start with '$'", field=here)
        if key in RESERVED_KEYS:
            raise InvalidInput(f"{key!r} is set by the service; choose another key", field=here)
        ok = (
            isinstance(value, str | bool)
            or (isinstance(value, int | float) and math.isfinite(value))
            or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        )
        if not ok:
            raise InvalidInput(
                "metadata values must be strings, numbers, booleans or lists of strings "
                "(no null, no nested objects)",
                field=here,
            )
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(
            f"metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}", field=where
        )


_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def contextual_texts(document: NewDocument, chunks: Sequence[Chunk]) -> list[str]:
    """Each chunk's text as the encoders read it: headed by its document's title and the
    Markdown headings it sits under, so that a passage far from its title still carries
    it (the stored passage stays the original text). What a chunk already begins with is
    not repeated."""
    title = document.metadata.get("title")
    title = title.strip() if isinstance(title, str) else ""
    headings = [
        (m.start(), len(m.group(1)), m.group(2).strip()) for m in _HEADING.finditer(document.text)
    ]
    texts = []
    for chunk in chunks:
        path: list[str] = []  # the headings above this chunk, outermost first
        levels: list[int] = []
        for start, level, heading in headings:
            if start >= chunk.start:
                break
            while levels and levels[-1] >= level:
                levels.pop()
                path.pop()
            levels.append(level)
            path.append(heading)
        head = chunk.text[:300].lower()
        context = [
            part for part in dict.fromkeys([title, *path]) if part and part.lower() not in head
        ]
        texts.append("\n".join([*context, chunk.text]) if context else chunk.text)
    return texts


def encoder_texts(preparations: Sequence[Preparation], *, contextual: bool) -> list[str]:
    """The texts the encoders read for the chunks of `preparations`, in order."""
    return [
        text
        for p in preparations
        for text in (
            contextual_texts(p.document, p.chunks) if contextual else [c.text for c in p.chunks]
        )
    ]


def embed_chunks(
    preparations: Sequence[Preparation],
    *,
    embed: Callable[[list[str]], list[list[float]]],
    encoder: BM25Encoder,
    contextual: bool = True,
) -> None:
    """The first half of turning a batch into records, which needs no corpus statistics
    and so may run ahead of storing: dense vectors and BM25 term counts of every chunk
    (`contextual`: read with its title and headings, see `contextual_texts`)."""
    texts = encoder_texts(preparations, contextual=contextual)
    vectors = embed(texts) if texts else []
    position = 0
    for p in preparations:
        n = len(p.chunks)
        p.vectors = [[float(v) for v in vector] for vector in vectors[position : position + n]]
        p.counts = [encoder.term_counts(text) for text in texts[position : position + n]]
        p.delta = CorpusDelta.of(p.counts)
        position += n


def encode_records(preparations: Sequence[Preparation], *, encoder: BM25Encoder) -> None:
    """The second half, at the moment of storing: records with BM25 vectors encoded
    against the corpus statistics as they will be once the batch is stored."""
    pending = CorpusDelta.of(c for p in preparations for c in p.counts)
    for p in preparations:
        records = []
        for chunk, vector, counts in zip(p.chunks, p.vectors, p.counts, strict=True):
            metadata = {
                **p.document.metadata,
                TEXT_KEY: chunk.text,
                DOCUMENT_KEY: p.id,
                "chunk_index": chunk.index,
                "chunk_start": chunk.start,
            }
            if p.document.source:
                metadata["source"] = p.document.source
            records.append(
                Record(
                    id=chunk_id(p.id, p.identity.revision, chunk.index),
                    values=vector,
                    sparse=encoder.encode_document(counts, pending=pending),
                    metadata=metadata,
                )
            )
        p.records = records
