"""Bulk ingestion on Ray (`ingest --ray`), on a local Ray the test starts: the same
documents, chunks, vectors and BM25 statistics as the API's own ingestion, and a re-run
that changes nothing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.cli import main
from backend.cli.sources import batches, iter_documents
from backend.common.settings import get_settings
from backend.db import repository
from backend.db.engine import session_factory
from backend.services.components import build_documents, open_database
from tests.cli.test_cli import _add_user

ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _corpus(folder: Path) -> Path:
    folder.mkdir()
    body = "Glaciers retreat as the climate warms, and their meltwater raises the sea. " * 12
    lines = [
        {"_id": f"a{i}", "title": f"Study {i} of ice", "text": f"{body} Finding number {i}.",
         "metadata": {"year": 2000 + i}}
        for i in range(23)
    ]  # fmt: skip
    lines.append(dict(lines[3]))  # the same document twice: merged, as the API does
    (folder / "corpus.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    (folder / "notes.md").write_text("# Notes\n\n## Coral\n\nCoral reefs bleach in warm water.")
    return folder


def _use(monkeypatch: pytest.MonkeyPatch, where: Path) -> None:
    monkeypatch.setenv("DATA_DIR", str(where))
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{where / 'db.sqlite3'}")
    monkeypatch.setenv("VECTOR_STORE", "embedded")
    monkeypatch.setenv("ENVIRONMENT", "development")
    get_settings.cache_clear()


async def _through_the_api(folder: Path, batch_size: int) -> None:
    """What POST /documents does, one request per batch."""
    settings = get_settings()
    engine = await open_database(settings)
    sessions = session_factory(engine)
    async with sessions() as session:
        user = await repository.get_user_by_username(session=session, username="operator")
    assert user is not None
    documents = await build_documents(settings, sessions)
    for batch in batches(iter_documents([folder]), batch_size):
        await documents.ingest(user=user, documents=batch, operator=True)
    await documents.store.close()
    await engine.dispose()


def _stored(where: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    db = sqlite3.connect(where / "db.sqlite3")
    documents = {
        row[0]: row[1:]
        for row in db.execute("SELECT id, revision, chunk_count, bm25 FROM documents")
    }
    stats = db.execute("SELECT * FROM bm25_stats").fetchall()
    db.close()
    vectors = sqlite3.connect(where / "vectors.sqlite3")
    records = {
        row[0]: (np.frombuffer(row[1], dtype=np.float32), json.loads(row[2]), json.loads(row[3]))
        for row in vectors.execute("SELECT id, dense, sparse, metadata FROM records")
    }
    vectors.close()
    return documents, records, stats


def test_ray_ingests_exactly_what_the_api_does(
    local_ray: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = _corpus(tmp_path / "corpus")
    _use(monkeypatch, tmp_path / "api")
    asyncio.run(_add_user("operator"))
    asyncio.run(_through_the_api(folder, batch_size=8))

    _use(monkeypatch, tmp_path / "ray")
    asyncio.run(_add_user("operator"))
    args = ["ingest", str(folder), "--user", "operator", "--quiet", "--ray", "--workers", "2"]
    assert main([*args, "--batch-size", "8"]) == 0
    assert "documents: 25 (24 created, 0 updated, 1 unchanged)" in capsys.readouterr().out

    api_documents, api_records, api_stats = _stored(tmp_path / "api")
    ray_documents, ray_records, ray_stats = _stored(tmp_path / "ray")
    assert ray_documents == api_documents  # ids, revisions, chunk counts, BM25 counts
    assert len(api_documents) == 24
    assert ray_stats == api_stats
    assert ray_records.keys() == api_records.keys()
    for record_id, (dense, sparse, metadata) in api_records.items():
        ray_dense, ray_sparse, ray_metadata = ray_records[record_id]
        assert ray_metadata == metadata
        assert ray_sparse == sparse
        assert np.allclose(ray_dense, dense, atol=1e-5), record_id

    assert main([*args, "--batch-size", "8"]) == 0  # a re-run changes nothing
    assert "(0 created, 0 updated, 25 unchanged)" in capsys.readouterr().out
    assert _stored(tmp_path / "ray")[0] == api_documents


def test_without_ray_the_flag_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    _use(monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match=r"requirements-ray\.txt"):
        main(["ingest", str(tmp_path), "--user", "x", "--ray"])
