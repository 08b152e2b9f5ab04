"""Hostile input stops where it enters. Text that no database can store (a NUL character,
a lone surrogate: not Unicode at all) is refused with a 422 naming the field, wherever it
comes in: the path, the query string, a JSON body at any depth (keys too) or a form field.
Numbers and lengths are bounded by each route's own schema (`MAX_OFFSET` for offsets)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.datastructures import UploadFile

from backend.api.errors import invalid_request

MAX_OFFSET = 1_000_000_000  # past any real listing; larger numbers overflow the database


def refuse_unstorable_text(value: str, where: tuple[str | int, ...]) -> None:
    if "\x00" in value:
        raise invalid_request(where, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_request(where, "is not valid Unicode (it holds a lone surrogate)") from None


def _walk(value: Any, where: tuple[str | int, ...]) -> None:
    if isinstance(value, str):
        refuse_unstorable_text(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            refuse_unstorable_text(key, (*where, key))
            _walk(item, (*where, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, (*where, index))


async def storable_text_only(request: Request) -> None:
    """An app-wide dependency: runs before every route's own dependencies."""
    for name, value in request.path_params.items():
        if isinstance(value, str):
            refuse_unstorable_text(value, ("path", name))
    for name, value in request.query_params.multi_items():
        refuse_unstorable_text(name, ("query", name))
        refuse_unstorable_text(value, ("query", name))
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        try:
            body = await request.json()  # read once already: Starlette keeps the bytes
        except ValueError:
            return  # not JSON: FastAPI's own validation says so
        _walk(body, ("body",))
    elif content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        for name, value in form.multi_items():
            if not isinstance(value, UploadFile):  # a file's bytes are the file's business
                refuse_unstorable_text(name, ("body", name))
                refuse_unstorable_text(value, ("body", name))
