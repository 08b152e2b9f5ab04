"""The embedded vector store: exact search with Pinecone's data model and semantics, in
memory for speed, persisted write-through to a SQLite file and reloaded on start.

Per namespace it keeps a dense matrix, an inverted index of sparse weights, and per-field
metadata indexes, so a query is one matrix product, a few array additions, and a filter
mask built from the indexes (never a scan of every record's metadata).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from array import array
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from backend.retrieval.bm25 import SparseVector
from backend.retrieval.filters import Filter, FilterError
from backend.retrieval.store import DimensionMismatch, Match, Record, rank

CHANGES_KEPT_SECONDS = 3600.0  # a process that looks less often reads everything again


def _key(value: Any) -> tuple[str, Any]:
    """Equality key with Pinecone's typing: booleans apart from numbers, 1 == 1.0."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    return ("s", value)


class _Namespace:
    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self._empty()

    def _empty(self) -> None:
        self.ids: list[str] = []
        self.rows: dict[str, int] = {}
        self.dense = np.zeros((64, self.dimension), dtype=np.float32)
        self.alive = np.zeros(64, dtype=bool)
        self.metadata: list[dict[str, Any] | None] = []
        self.sparse_rows: dict[int, array] = {}  # token id -> rows
        self.sparse_weights: dict[int, array] = {}  # token id -> weights
        self.row_tokens: list[list[int]] = []
        self.eq_index: dict[str, dict[tuple[str, Any], set[int]]] = {}
        self.present: dict[str, set[int]] = {}
        self.numeric: dict[str, np.ndarray] = {}
        self.live = 0

    @property
    def size(self) -> int:
        return len(self.ids)

    def _grow(self) -> None:
        capacity = len(self.alive) * 2
        dense = np.zeros((capacity, self.dimension), dtype=np.float32)
        dense[: self.size] = self.dense[: self.size]
        self.dense = dense
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.size] = self.alive[: self.size]
        self.alive = alive
        for name, column in self.numeric.items():
            grown = np.full(capacity, np.nan)
            grown[: len(column)] = column
            self.numeric[name] = grown

    def add(self, record: Record) -> None:
        if record.id in self.rows:
            self.remove(record.id)
        if self.size == len(self.alive):
            self._grow()
        row = self.size
        self.ids.append(record.id)
        self.rows[record.id] = row
        self.dense[row] = np.asarray(record.values, dtype=np.float32)
        self.alive[row] = True
        self.metadata.append(record.metadata)
        tokens: list[int] = []
        if record.sparse is not None:
            for tid, weight in zip(record.sparse.indices, record.sparse.values, strict=True):
                self.sparse_rows.setdefault(tid, array("q")).append(row)
                self.sparse_weights.setdefault(tid, array("f")).append(weight)
                tokens.append(tid)
        self.row_tokens.append(tokens)
        for name, value in record.metadata.items():
            self.present.setdefault(name, set()).add(row)
            index = self.eq_index.setdefault(name, {})
            for item in value if isinstance(value, list) else [value]:
                index.setdefault(_key(item), set()).add(row)
            if isinstance(value, int | float) and not isinstance(value, bool):
                column = self.numeric.get(name)
                if column is None:
                    column = self.numeric[name] = np.full(len(self.alive), np.nan)
                column[row] = float(value)
        self.live += 1

    def remove(self, record_id: str) -> None:
        row = self.rows.pop(record_id, None)
        if row is None:
            return
        self.alive[row] = False
        metadata = self.metadata[row] or {}
        for name, value in metadata.items():
            self.present[name].discard(row)
            for item in value if isinstance(value, list) else [value]:
                self.eq_index[name].get(_key(item), set()).discard(row)
            if name in self.numeric:
                self.numeric[name][row] = np.nan
        self.metadata[row] = None
        # Sparse postings of a dead row stay until compaction; `alive` masks them out.
        self.live -= 1
        if self.size > 1024 and self.live < self.size // 2:
            self._compact()

    def _compact(self) -> None:
        survivors = [
            Record(
                self.ids[row],
                self.dense[row].tolist(),
                self._sparse_of(row),
                self.metadata[row] or {},
            )
            for row in range(self.size)
            if self.alive[row]
        ]
        self._empty()
        for record in survivors:
            self.add(record)

    def _sparse_of(self, row: int) -> SparseVector | None:
        tokens = self.row_tokens[row]
        if not tokens:
            return None
        values = []
        for tid in tokens:
            rows = np.frombuffer(self.sparse_rows[tid], dtype=np.int64)
            position = int(np.flatnonzero(rows == row)[0])
            values.append(float(self.sparse_weights[tid][position]))
        return SparseVector(indices=list(tokens), values=values)

    # --- filters -----------------------------------------------------------------------------
    def _rows_mask(self, rows: set[int]) -> np.ndarray:
        mask = np.zeros(self.size, dtype=bool)
        if rows:
            mask[np.fromiter(rows, dtype=np.int64, count=len(rows))] = True
        return mask

    def _equal_mask(self, name: str, values: list[Any]) -> np.ndarray:
        index = self.eq_index.get(name, {})
        rows: set[int] = set()
        for value in values:
            rows |= index.get(_key(value), set())
        return self._rows_mask(rows)

    def mask(self, filter_: Filter | None) -> np.ndarray:
        alive = self.alive[: self.size]
        if not filter_:
            return alive.copy()
        mask = alive.copy()
        for key, value in filter_.items():
            if key == "$and":
                for sub in value:
                    mask &= self.mask(sub)
            elif key == "$or":
                either = np.zeros(self.size, dtype=bool)
                for sub in value:
                    either |= self.mask(sub)
                mask &= either
            else:
                condition = value if isinstance(value, dict) else {"$eq": value}
                for op, operand in condition.items():
                    mask &= self._condition(key, op, operand)
        return mask

    def _condition(self, name: str, op: str, operand: Any) -> np.ndarray:
        match op:
            case "$eq":
                return self._equal_mask(name, [operand])
            case "$in":
                return self._equal_mask(name, operand)
            case "$ne":
                return ~self._equal_mask(name, [operand])
            case "$nin":
                return ~self._equal_mask(name, operand)
            case "$exists":
                present = self._rows_mask(self.present.get(name, set()))
                return present if operand else ~present
            case "$gt" | "$gte" | "$lt" | "$lte":
                column = self.numeric.get(name)
                if column is None:
                    return np.zeros(self.size, dtype=bool)
                values = column[: self.size]
                with np.errstate(invalid="ignore"):
                    match op:
                        case "$gt":
                            return values > operand
                        case "$gte":
                            return values >= operand
                        case "$lt":
                            return values < operand
                        case "$lte":
                            return values <= operand
        raise FilterError(f"filter.{name}", f"unknown operator {op!r}")

    # --- search ------------------------------------------------------------------------------
    def query(
        self,
        vector: list[float] | None,
        sparse: SparseVector | None,
        top_k: int,
        filter_: Filter | None,
    ) -> list[Match]:
        n = self.size
        if n == 0 or top_k <= 0:
            return []
        mask = self.mask(filter_)
        candidates = np.flatnonzero(mask)
        if candidates.size == 0:
            return []
        scores = np.zeros(n, dtype=np.float64)
        if vector is not None:
            scores += self.dense[:n] @ np.asarray(vector, dtype=np.float32)
        if sparse is not None:
            for tid, weight in zip(sparse.indices, sparse.values, strict=True):
                rows = self.sparse_rows.get(tid)
                if rows is None:
                    continue
                row_index = np.frombuffer(rows, dtype=np.int64)
                # One posting per (token, row), so fancy-index addition is exact.
                scores[row_index] += weight * np.frombuffer(
                    self.sparse_weights[tid], dtype=np.float32
                )
        candidate_scores = scores[candidates]
        if candidates.size > top_k:
            # A generous partial sort, then the exact (score, id) order on the few left.
            keep = min(candidates.size, top_k * 2 + 16)
            part = np.argpartition(-candidate_scores, keep - 1)[:keep]
            candidates, candidate_scores = candidates[part], candidate_scores[part]
        matches = [
            Match(self.ids[row], float(score), dict(self.metadata[row] or {}))
            for row, score in zip(candidates.tolist(), candidate_scores.tolist(), strict=True)
        ]
        return rank(matches, top_k)


class EmbeddedVectorStore:
    """Exact hybrid search in this process; `path` is its SQLite file (None: memory only).

    Several processes may share the file (`python -m backend`'s workers): every write also
    logs the ids it touched in `changes`, and before a read each process applies what the
    others logged since it last looked (at most every `refresh_seconds`), so a record
    stored through one worker is found through all within that time."""

    def __init__(self, path: Path | None, *, dimension: int, refresh_seconds: float = 0.2) -> None:
        self.dimension = dimension
        self.path = path
        self.refresh_seconds = refresh_seconds
        self._namespaces: dict[str, _Namespace] = {}
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._seen = 0  # the last change (seq) applied here
        self._checked = 0.0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS records (namespace TEXT, id TEXT, dense BLOB, "
                "sparse TEXT, metadata TEXT, PRIMARY KEY (namespace, id))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                "namespace TEXT, id TEXT, at REAL)"
            )
            self._load()

    def _record(self, record_id: str, dense: bytes, sparse: str | None, metadata: str) -> Record:
        values = np.frombuffer(dense, dtype=np.float32)
        if values.size != self.dimension:
            raise DimensionMismatch(str(self.path), values.size, self.dimension)
        sparse_vector = SparseVector(**json.loads(sparse)) if sparse else None
        return Record(record_id, values.tolist(), sparse_vector, json.loads(metadata))

    def _load(self) -> None:
        assert self._db is not None
        self._namespaces = {}
        with self._db:
            self._db.execute("BEGIN")  # the records as of change `_seen`, consistently
            self._seen = self._last_change()
            cursor = self._db.execute("SELECT namespace, id, dense, sparse, metadata FROM records")
            for namespace, record_id, dense, sparse, metadata in cursor:
                self._space(namespace).add(self._record(record_id, dense, sparse, metadata))

    def _last_change(self) -> int:
        assert self._db is not None
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0])

    def _catch_up(self) -> None:
        """Apply the records other processes changed since this one last looked."""
        now = time.monotonic()
        if self._db is None or now - self._checked < self.refresh_seconds:
            return
        self._checked = now
        if self._last_change() == self._seen:
            return
        with self._db:
            self._db.execute("BEGIN")
            first = self._db.execute("SELECT min(seq) FROM changes WHERE seq > ?", (self._seen,))
            oldest = first.fetchone()[0]
            if oldest is not None and oldest > self._seen + 1 and self._seen:
                self._db.execute("COMMIT")
                self._load()  # older changes were pruned meanwhile: read everything again
                return
            touched = self._db.execute(
                "SELECT seq, namespace, id FROM changes WHERE seq > ? ORDER BY seq", (self._seen,)
            ).fetchall()
            for seq, namespace, record_id in touched:
                row = self._db.execute(
                    "SELECT dense, sparse, metadata FROM records WHERE namespace = ? AND id = ?",
                    (namespace, record_id),
                ).fetchone()
                if row is None:
                    space = self._namespaces.get(namespace)
                    if space is not None:
                        space.remove(record_id)
                else:
                    self._space(namespace).add(self._record(record_id, *row))
                self._seen = seq

    def _log(self, namespace: str, ids: Sequence[str]) -> None:
        """Within a write: log the ids it touches; if nothing else was written since this
        process last caught up, it is still up to date afterwards."""
        assert self._db is not None
        current = self._last_change() == self._seen
        now = time.time()
        self._db.executemany(
            "INSERT INTO changes (namespace, id, at) VALUES (?, ?, ?)",
            [(namespace, i, now) for i in ids],
        )
        self._db.execute("DELETE FROM changes WHERE at < ?", (now - CHANGES_KEPT_SECONDS,))
        if current:
            self._seen = self._last_change()

    def _space(self, namespace: str) -> _Namespace:
        space = self._namespaces.get(namespace)
        if space is None:
            space = self._namespaces[namespace] = _Namespace(self.dimension)
        return space

    # --- writes ------------------------------------------------------------------------------
    def _upsert(self, records: Sequence[Record], namespace: str) -> None:
        for record in records:
            if len(record.values) != self.dimension:
                raise ValueError(
                    f"record {record.id!r} has {len(record.values)} dense values; "
                    f"the store holds {self.dimension}"
                )
        with self._lock:
            if self._db is not None:
                rows = [
                    (
                        namespace,
                        r.id,
                        np.asarray(r.values, dtype=np.float32).tobytes(),
                        json.dumps(r.sparse.as_dict()) if r.sparse else None,
                        json.dumps(r.metadata),
                    )
                    for r in records
                ]
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany("INSERT OR REPLACE INTO records VALUES (?,?,?,?,?)", rows)
                    self._log(namespace, [r.id for r in records])
            space = self._space(namespace)
            for record in records:
                space.add(record)

    def _delete(self, ids: Sequence[str], namespace: str) -> None:
        with self._lock:
            if self._db is not None:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(
                        "DELETE FROM records WHERE namespace = ? AND id = ?",
                        [(namespace, i) for i in ids],
                    )
                    self._log(namespace, ids)
            space = self._namespaces.get(namespace)
            if space is not None:
                for record_id in ids:
                    space.remove(record_id)

    async def upsert(self, records: Sequence[Record], *, namespace: str) -> None:
        await anyio.to_thread.run_sync(self._upsert, records, namespace)

    async def delete(self, ids: Sequence[str], *, namespace: str) -> None:
        await anyio.to_thread.run_sync(self._delete, ids, namespace)

    # --- reads -------------------------------------------------------------------------------
    def query_sync(
        self,
        *,
        namespace: str,
        vector: list[float] | None,
        sparse: SparseVector | None,
        top_k: int,
        filter_: Filter | None = None,
    ) -> list[Match]:
        with self._lock:
            self._catch_up()
            space = self._namespaces.get(namespace)
            return space.query(vector, sparse, top_k, filter_) if space else []

    async def query(
        self,
        *,
        namespace: str,
        vector: list[float] | None,
        sparse: SparseVector | None,
        top_k: int,
        filter_: Filter | None = None,
    ) -> list[Match]:
        return await anyio.to_thread.run_sync(
            lambda: self.query_sync(
                namespace=namespace, vector=vector, sparse=sparse, top_k=top_k, filter_=filter_
            )
        )

    def list_ids_sync(self, *, prefix: str, namespace: str) -> list[str]:
        with self._lock:
            self._catch_up()
            space = self._namespaces.get(namespace)
            return sorted(i for i in (space.rows if space else {}) if i.startswith(prefix))

    async def list_ids(self, *, prefix: str, namespace: str) -> list[str]:
        return await anyio.to_thread.run_sync(
            lambda: self.list_ids_sync(prefix=prefix, namespace=namespace)
        )

    def count_sync(self, *, namespace: str) -> int:
        with self._lock:
            self._catch_up()
            space = self._namespaces.get(namespace)
            return space.live if space else 0

    async def count(self, *, namespace: str) -> int:
        return await anyio.to_thread.run_sync(lambda: self.count_sync(namespace=namespace))

    def namespaces(self) -> list[str]:
        with self._lock:
            self._catch_up()
        return sorted(name for name, space in self._namespaces.items() if space.live)

    # --- copying between stores ----------------------------------------------------------
    @staticmethod
    def stored_dimension(path: Path) -> int | None:
        """The dimension of the vectors in the file at `path` (None: no file, or empty)."""
        if not path.exists():
            return None
        db = sqlite3.connect(path)
        try:
            row = db.execute("SELECT length(dense) FROM records LIMIT 1").fetchone()
        except sqlite3.OperationalError:  # no table yet
            return None
        finally:
            db.close()
        return row[0] // 4 if row else None

    async def records(self, namespace: str, *, batch: int = 1000) -> AsyncIterator[list[Record]]:
        """Every record of `namespace` as stored (vectors too), `batch` at a time, by id."""
        if self._db is None:
            raise RuntimeError("an in-memory store has no records to copy")
        after = ""
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, dense, sparse, metadata FROM records WHERE namespace = ? "
                    "AND id > ? ORDER BY id LIMIT ?",
                    (namespace, after, batch),
                ).fetchall()
            if not rows:
                return
            yield [self._record(*row) for row in rows]
            after = rows[-1][0]

    async def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
