"""A loopback server speaking Pinecone's data-plane REST API, backed by the embedded store:
the real `pinecone` SDK talks to it in tests (Pinecone Local is a Docker image)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request

from backend.retrieval.bm25 import SparseVector
from backend.retrieval.embedded import EmbeddedVectorStore
from backend.retrieval.filters import FilterError, validate_filter
from backend.retrieval.store import Record

PAGE = 100


def pinecone_app(dimension: int) -> FastAPI:
    store = EmbeddedVectorStore(None, dimension=dimension)
    app = FastAPI()
    app.state.store = store
    app.state.requests = []  # (path, body) of every call, for tests to inspect

    @app.middleware("http")
    async def require_key(request: Request, call_next):  # type: ignore[no-untyped-def]
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
        await store.upsert(records, namespace=body.get("namespace", ""))
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
        matches = await store.query(
            namespace=body.get("namespace", ""),
            vector=vector if vector and any(vector) else None,
            sparse=sparse(body.get("sparseVector")),
            top_k=body["topK"],
            filter=filter_,
        )
        return {
            "matches": [
                {
                    "id": m.id,
                    "score": m.score,
                    "values": [],
                    **({"metadata": m.metadata} if body.get("includeMetadata") else {}),
                }
                for m in matches
            ],
            "namespace": body.get("namespace", ""),
            "usage": {"readUnits": 5},
        }

    @app.post("/vectors/delete")
    async def delete(body: dict[str, Any]) -> dict[str, Any]:
        app.state.requests.append(("/vectors/delete", body))
        await store.delete(body.get("ids", []), namespace=body.get("namespace", ""))
        return {}

    @app.get("/vectors/list")
    async def list_vectors(
        namespace: str = "", prefix: str = "", limit: int = PAGE, paginationToken: str | None = None
    ) -> dict[str, Any]:
        ids = store.list_ids_sync(prefix=prefix, namespace=namespace)
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
        namespaces = {
            ns: {"vectorCount": store.count_sync(namespace=ns)} for ns in store.namespaces()
        }
        return {
            "namespaces": namespaces,
            "dimension": dimension,
            "indexFullness": 0.0,
            "totalVectorCount": sum(n["vectorCount"] for n in namespaces.values()),
        }

    return app
