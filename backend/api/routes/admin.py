"""Operators' routes: only admins reach them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from backend.api.deps import AdminUser, ComponentsDep
from backend.services.feedback import KINDS, ExportOptions, FeedbackExport

router = APIRouter(prefix="/admin", tags=["admin"])

NDJSON = "application/x-ndjson"


@router.get(
    "/feedback/export",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "One JSON record per line."}},
)
async def export_feedback(
    _: AdminUser,
    components: ComponentsDep,
    kinds: Annotated[
        str,
        Query(
            max_length=100,
            description="Comma-separated: ratings (rated answers), preferences (answer "
            "pairs: kept or 👍 over replaced or 👎), cases (👎 answers as evaluation cases).",
        ),
    ] = ",".join(KINDS),
    since: Annotated[
        datetime | None, Query(description="Only what was said since (ISO 8601, with zone).")
    ] = None,
    usernames: Annotated[
        bool, Query(description="Real usernames instead of pseudonyms (keyed hashes).")
    ] = False,
) -> StreamingResponse:
    """What users said about answers, as NDJSON (streamed; one record per line, each with
    a `type`): rated answers with their question, sources, rating and comment; preference
    pairs from regenerations, revisions and ratings; 👎 answers as evaluation cases that
    `python -m backend.cli eval-answers --cases` runs again. Admins only."""
    options = ExportOptions.parse(kinds, since, usernames=usernames)
    export = FeedbackExport(components.sessions, components.settings.secret_key.get_secret_value())

    async def lines() -> AsyncIterator[bytes]:
        async for record in export.records(options):
            yield (json.dumps(record, ensure_ascii=False) + "\n").encode()

    return StreamingResponse(
        lines(),
        media_type=NDJSON,
        headers={"Content-Disposition": 'attachment; filename="feedback.ndjson"'},
    )
