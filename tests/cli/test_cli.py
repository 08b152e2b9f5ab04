"""The command-line ingester: folders and JSONL files in, through the API's ingestion path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from backend.cli import main
from backend.common.settings import get_settings
from backend.db import repository
from backend.db.engine import session_factory
from backend.services.components import open_database


async def _add_user(username: str) -> None:
    engine = await open_database(get_settings())
    try:
        async with session_factory(engine)() as session:
            await repository.create_user(session=session, username=username, password_hash="-")
            await session.commit()
    finally:
        await engine.dispose()


async def _documents(username: str) -> dict[str, int]:
    engine = await open_database(get_settings())
    try:
        async with session_factory(engine)() as session:
            user = await repository.get_user_by_username(session=session, username=username)
            assert user is not None
            found, _ = await repository.list_documents(
                session=session, owner_id=user.id, limit=100, offset=0
            )
            return {d.id: d.chunk_count for d in found}
    finally:
        await engine.dispose()


def test_folders_and_jsonl_are_ingested_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("VECTOR_STORE", "embedded")
    monkeypatch.setenv("ENVIRONMENT", "development")
    folder = tmp_path / "corpus"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "glaciers.md").write_text("# Glaciers\n\nGlaciers retreat as it warms.")
    (folder / "readme.txt").write_text("Lace plants shed cells through programmed death.")
    (folder / "broken.pdf").write_bytes(b"not a pdf")  # skipped with a warning
    lines = [{"_id": "q1", "title": "Syncope", "text": "Bathing syncope in infants."}]
    (folder / "extra.jsonl").write_text("\n".join(json.dumps(line) for line in lines))

    assert main(["ingest", str(folder), "--user", "operator", "--quiet"]) == 2
    assert "no user 'operator'" in capsys.readouterr().err

    asyncio.run(_add_user("operator"))
    assert main(["ingest", str(folder), "--user", "operator", "--quiet"]) == 0
    assert "documents: 3 (3 created, 0 updated, 0 unchanged)" in capsys.readouterr().out
    stored = asyncio.run(_documents("operator"))
    assert set(stored) == {"notes/glaciers.md", "readme.txt", "q1"}
    assert all(chunks >= 1 for chunks in stored.values())

    assert main(["ingest", str(folder), "--user", "operator", "--quiet"]) == 0
    assert "(0 created, 0 updated, 3 unchanged)" in capsys.readouterr().out
