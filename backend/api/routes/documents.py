from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from backend.api.deps import CurrentUser, DocumentsDep, LimitedUser, SettingsDep
from backend.api.inputs import MAX_OFFSET
from backend.api.schemas import (
    DocumentPublic,
    DocumentsIn,
    DocumentsPublic,
    IngestedDocument,
    IngestResponse,
    SearchRequest,
    SearchResponse,
    SourcePublic,
)
from backend.common.errors import InvalidInput, PayloadTooLarge
from backend.db.models import Document
from backend.retrieval.extract import UnreadableFile, extract_text, kind_of
from backend.services.documents import IngestResult, scope_of
from backend.services.ingestion import NewDocument

router = APIRouter(tags=["documents"])


def in_megabytes(size: int) -> str:
    """A size as people read it (MB of 2**20 bytes, as Streamlit counts them)."""
    return f"{size / 2**20:.4g} MB" if size >= 2**20 else f"{size} bytes"


def _ingested(results: list[IngestResult]) -> IngestResponse:
    return IngestResponse(
        documents=[
            IngestedDocument(
                id=r.id, namespace=scope_of(r.namespace), status=r.status, chunks=r.chunks
            )
            for r in results
        ],
        chunks=sum(r.chunks for r in results if r.status != "unchanged"),
    )


def _public(document: Document) -> DocumentPublic:
    return DocumentPublic(
        id=document.id,
        namespace=scope_of(document.namespace),
        source=document.source,
        metadata=document.doc_metadata,
        chunk_count=document.chunk_count,
        char_count=document.char_count,
        content_hash=document.content_hash,
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


@router.post("/documents", status_code=status.HTTP_201_CREATED, response_model=IngestResponse)
async def ingest_documents(
    body: DocumentsIn, user: LimitedUser, service: DocumentsDep
) -> IngestResponse:
    """Ingest JSON documents into your private namespace (or the shared one, if you publish)."""
    results = await service.ingest(
        user=user,
        documents=[document.to_domain() for document in body.documents],
        scope=body.namespace,
    )
    return _ingested(results)


@router.post(
    "/documents/upload", status_code=status.HTTP_201_CREATED, response_model=IngestResponse
)
async def upload_document(
    user: LimitedUser,
    service: DocumentsDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="Plain text, Markdown, HTML or PDF.")],
    metadata: Annotated[str | None, Form(description="A JSON object of metadata.")] = None,
    document_id: Annotated[str | None, Form(alias="id")] = None,
    namespace: Annotated[Literal["private", "shared"], Form()] = "private",
) -> IngestResponse:
    """Ingest one uploaded file (text, Markdown, HTML or PDF)."""
    filename = file.filename or "upload"
    kind = kind_of(filename, file.content_type)
    if kind is None:
        raise InvalidInput(
            f"{filename!r}: unsupported file type; send .txt, .md, .html or .pdf",
            field=("file",),
        )
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the file is larger than the {in_megabytes(settings.max_upload_bytes)} allowed "
            "(MAX_UPLOAD_BYTES)"
        )
    try:
        meta = json.loads(metadata) if metadata else {}
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"metadata is not JSON ({exc.msg})", field=("metadata",)) from exc
    if not isinstance(meta, dict):
        raise InvalidInput("metadata must be a JSON object", field=("metadata",))
    try:
        text, info = extract_text(data, kind)
    except UnreadableFile as exc:
        raise InvalidInput(f"{filename!r}: {exc}", field=("file",)) from exc
    if not text.strip():
        raise InvalidInput(f"{filename!r} holds no text", field=("file",))
    meta = {"title": info.get("title") or filename, **meta}
    if "pages" in info:
        meta.setdefault("pages", info["pages"])
    results = await service.ingest(
        user=user,
        documents=[NewDocument(text=text, id=document_id, metadata=meta, source=filename)],
        scope=namespace,
    )
    return _ingested(results)


@router.get("/documents", response_model=DocumentsPublic)
async def list_documents(
    user: CurrentUser,
    service: DocumentsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> DocumentsPublic:
    """Your documents (private and published), most recently updated first."""
    found, count = await service.list(user=user, limit=limit, offset=offset)
    return DocumentsPublic(data=[_public(d) for d in found], count=count)


@router.delete("/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(
    document_id: str,
    user: CurrentUser,
    service: DocumentsDep,
    namespace: Literal["private", "shared"] | None = None,
) -> Response:
    """Delete one of your documents and all its chunks."""
    await service.delete(user=user, document_id=document_id, scope=namespace)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/search", response_model=SearchResponse)
async def search(body: SearchRequest, user: LimitedUser, service: DocumentsDep) -> SearchResponse:
    """Ranked passages for a query (hybrid, filtered), without generation."""
    result = await service.search(
        user=user,
        query=body.query,
        scopes=body.namespaces,
        filter_=body.filter,
        top_k=body.top_k,
        alpha=body.alpha,
        group_by=body.group_by,
    )
    return SearchResponse(
        results=[SourcePublic(**p.as_source()) for p in result.passages], timings=result.timings
    )
