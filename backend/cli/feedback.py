"""`python -m backend.cli export-feedback`: what users said about answers (see
backend/services/feedback.py) as one NDJSON file, or as a Hugging Face dataset folder (a
JSONL file per kind and a dataset card that names them, ready for `huggingface-cli
upload`). Written under a temporary name and renamed when whole."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

FILE_OF = {"rating": "ratings", "preference": "preferences", "case": "cases"}  # by type

DATASET_CARD = """---
configs:
{configs}
---

# Feedback exported from ragstream

{counts}

- `ratings`: rated answers: question, `history` (the thread before it), `answer` (text,
  model, sources, search query), `rating` (1 or -1) and `comment`.
- `preferences`: two answers to one question, `chosen` over `rejected`, with `reason`
  (rating, revision or regeneration) and the user's `feedback`.
- `cases`: answers rated -1 as evaluation cases (`python -m backend.cli eval-answers
  --cases cases.jsonl`).

Users are pseudonyms (keyed hashes of their ids) unless the export asked for usernames.
"""


async def write_ndjson(records: AsyncIterator[dict[str, Any]], out: IO[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    async for record in records:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        counts[record["type"]] += 1
    return counts


async def write_file(records: AsyncIterator[dict[str, Any]], path: Path | None) -> Counter[str]:
    """To `path` (whole or not at all), or to standard output."""
    if path is None:
        return await write_ndjson(records, sys.stdout)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", encoding="utf-8") as out:
        counts = await write_ndjson(records, out)
    partial.replace(path)
    return counts


async def write_dataset(records: AsyncIterator[dict[str, Any]], folder: Path) -> Counter[str]:
    """A folder with ratings.jsonl, preferences.jsonl, cases.jsonl (those with records) and
    README.md; built beside `folder` and moved into place whole (replacing an earlier one)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    counts: Counter[str] = Counter()  # by record type
    files: dict[str, IO[str]] = {}
    try:
        async for record in records:
            kind = record["type"]
            if kind not in files:
                files[kind] = (building / f"{FILE_OF[kind]}.jsonl").open("w", encoding="utf-8")
            files[kind].write(json.dumps(record, ensure_ascii=False) + "\n")
            counts[kind] += 1
        for out in files.values():
            out.close()
        _install(building, folder, counts)
    except BaseException:
        for out in files.values():
            out.close()
        shutil.rmtree(building, ignore_errors=True)
        raise
    return counts


def _install(building: Path, folder: Path, counts: Counter[str]) -> None:
    """The dataset card written, then the folder built moved into place."""
    names = sorted(FILE_OF[kind] for kind in counts)
    configs = "\n".join(f"- config_name: {name}\n  data_files: {name}.jsonl" for name in names)
    shown = ", ".join(f"{counts[k]} {FILE_OF[k]}" for k in sorted(counts)) or "No records."
    (building / "README.md").write_text(
        DATASET_CARD.format(configs=configs or "[]", counts=shown), encoding="utf-8"
    )
    if folder.exists():
        shutil.rmtree(folder)
    building.replace(folder)
