"""Documents read from disk for the command-line tools: folders of text, Markdown, HTML
and PDF files, and JSONL files (one document a line, BEIR's corpus layout included)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from backend.retrieval.extract import SUPPORTED, UnreadableFile, extract_text, kind_of
from backend.services.ingestion import NewDocument

log = logging.getLogger(__name__)


def jsonl_items(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line; SystemExit naming the line that
    is not JSON."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON ({exc.msg})") from exc


def jsonl_documents(path: Path) -> Iterator[NewDocument]:
    """JSONL lines `{id?, text, metadata?}` or BEIR's `{_id, title?, text, metadata?}`."""
    for _number, item in jsonl_items(path):
        text = item.get("text") or ""
        if item.get("title"):
            text = f"{item['title']}\n\n{text}"
        # Null is no metadata value (Pinecone's rule too): such keys are left out.
        metadata = {k: v for k, v in (item.get("metadata") or {}).items() if v is not None}
        if item.get("title"):
            metadata.setdefault("title", item["title"])
        yield NewDocument(
            text=text,
            id=str(item.get("id") or item.get("_id") or "") or None,
            metadata=metadata,
            source=path.name,
        )


def file_document(path: Path, root: Path) -> NewDocument | None:
    kind = kind_of(path.name, None)
    if kind is None:
        return None
    try:
        text, info = extract_text(path.read_bytes(), kind)
    except UnreadableFile as exc:
        log.warning("skipped %s: %s", path, exc)
        return None
    if not text.strip():
        log.warning("skipped %s: no text", path)
        return None
    relative = str(path.relative_to(root)) if path != root else path.name
    metadata: dict[str, Any] = {"title": info.get("title") or path.stem}
    if "pages" in info:
        metadata["pages"] = info["pages"]
    return NewDocument(text=text, id=relative.replace("#", "_"), metadata=metadata, source=relative)


def iter_documents(paths: Sequence[Path]) -> Iterator[NewDocument]:
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                if file.suffix.lower() == ".jsonl":
                    yield from jsonl_documents(file)
                elif file.suffix.lower() in SUPPORTED and (doc := file_document(file, path)):
                    yield doc
        elif path.suffix.lower() == ".jsonl":
            yield from jsonl_documents(path)
        elif path.is_file():
            if doc := file_document(path, path.parent):
                yield doc
        else:
            raise SystemExit(f"{path}: no such file or folder")


def batches(items: Iterator[NewDocument], size: int) -> Iterator[list[NewDocument]]:
    batch: list[NewDocument] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
