"""A loopback server speaking Pinecone's data-plane REST API: the real `pinecone` SDK talks
to it in tests (Pinecone Local is a Docker image). It keeps records in a dict and ranks by
brute force (`reference_scores`), sharing no code with the stores under test but the filter
language's reference `matches`, so a ranking or scoring error in a store shows up as a
difference from it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from fastapi import FastAPI, Header, HTTPException, Request

from backend.retrieval.bm25 import SparseVector
from backend.retrieval.filters import FilterError, matches, validate_filter
from backend.retrieval.store import Record

PAGE = 100


def reference_scores(
    records: Iterable[Record],
    vector: list[float] | None,
    sparse: SparseVector | None,
    filter_: dict[str, Any] | None = None,
) -> list[tuple[str, float]]:
    """Every record that passes the filter with its score (dense dot product plus sparse dot
    product), best first, ties by id: the ranking every store must reproduce."""
    scored = []
    query = np.asarray(vector, dtype=np.float32) if vector else None
    for r in records:
        if not matches(filter_, r.metadata):
            continue
        score = 0.0
        if query is not None:
            score = float(np.dot(np.asarray(r.values, dtype=np.float32), query))
        if sparse and r.sparse:
            weights = dict(zip(r.sparse.indices, r.sparse.values, strict=True))
            score += sum(
                w * weights.get(t, 0.0) for t, w in zip(sparse.indices, sparse.values, strict=True)
            )
        scored.append((r.id, score))
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))


def pinecone_app(dimension: int) -> FastAPI:
    namespaces: dict[str, dict[str, Record]] = {}
    app = FastAPI()
    app.state.requests = []  # (path, body) of every call, for tests to inspect

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if not request.headers.get("api-key"):
            from fastapi.responses import JSONResponse

            return JSONResponse({"code": 16, "message": "missing Api-Key"}, status_code=401)
        return await call_next(request)

    def sparse(body: dict[str, Any] | None) -> SparseVector | None:
        if not body:
            return None
        return SparseVector(list(body["indices"]), list(body["values"]))

    @app.post("/vectors/upsert")
    async def upsert(body: dict[str, Any]) -> dict[str, Any]:
        vectors = body["vectors"]
        app.state.requests.append(("/vectors/upsert", body))
        if len(vectors) > 1000:
            raise HTTPException(400, "upsert at most 1000 records")
        records = [
            Record(v["id"], v["values"], sparse(v.get("sparseValues")), v.get("metadata") or {})
            for v in vectors
        ]
        if any(len(r.values) != dimension for r in records):
            raise HTTPException(400, f"Vector dimension does not match the index ({dimension})")
        namespace = namespaces.setdefault(body.get("namespace", ""), {})
        namespace.update((r.id, r) for r in records)
        return {"upsertedCount": len(records)}

    @app.post("/query")
    async def query(body: dict[str, Any]) -> dict[str, Any]:
        app.state.requests.append(("/query", body))
        filter_ = body.get("filter")
        if filter_:
            try:
                validate_filter(filter_)
            except FilterError as exc:
                raise HTTPException(400, str(exc)) from exc
        vector = body.get("vector")
        records = namespaces.get(body.get("namespace", ""), {})
        ranked = reference_scores(
            records.values(),
            vector if vector and any(vector) else None,
            sparse(body.get("sparseVector")),
            filter_,
        )[: body["topK"]]
        return {
            "matches": [
                {
                    "id": record_id,
                    "score": score,
                    "values": [],
                    **(
                        {"metadata": records[record_id].metadata}
                        if body.get("includeMetadata")
                        else {}
                    ),
                }
                for record_id, score in ranked
            ],
            "namespace": body.get("namespace", ""),
            "usage": {"readUnits": 5},
        }

    @app.post("/vectors/delete")
    async def delete(body: dict[str, Any]) -> dict[str, Any]:
        app.state.requests.append(("/vectors/delete", body))
        namespace = namespaces.get(body.get("namespace", ""), {})
        for record_id in body.get("ids", []):
            namespace.pop(record_id, None)
        return {}

    @app.get("/vectors/list")
    async def list_vectors(
        namespace: str = "", prefix: str = "", limit: int = PAGE, paginationToken: str | None = None
    ) -> dict[str, Any]:
        ids = sorted(i for i in namespaces.get(namespace, {}) if i.startswith(prefix))
        start = int(paginationToken or 0)
        page = ids[start : start + limit]
        response: dict[str, Any] = {
            "vectors": [{"id": i} for i in page],
            "namespace": namespace,
            "usage": {"readUnits": 1},
        }
        if start + limit < len(ids):
            response["pagination"] = {"next": str(start + limit)}
        return response

    @app.post("/describe_index_stats")
    async def stats(
        body: dict[str, Any] | None = None, api_key: str | None = Header(None)
    ) -> dict[str, Any]:
        counts = {ns: {"vectorCount": len(records)} for ns, records in namespaces.items()}
        return {
            "namespaces": counts,
            "dimension": dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(n["vectorCount"] for n in counts.values()),
        }

    return app
