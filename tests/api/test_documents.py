"""Ingestion, listing, deletion and search through the API; isolation between users."""

from __future__ import annotations

import json

import httpx
import pytest

from backend.retrieval.embedded import EmbeddedVectorStore
from tests.helpers import LiveServer, Serve, fake_model, register, stream_chat

DOCS = [
    {
        "id": "lace",
        "text": "Programmed cell death forms perforations in lace plant leaves. "
        "Mitochondria move along transvacuolar strands during this process.",
        "metadata": {
            "year": 2011,
            "section": "BACKGROUND",
            "meshes": ["Mitochondria", "Plant Leaves"],
        },
    },
    {
        "id": "acuity",
        "text": "Landolt C and Snellen E charts measure visual acuity in strabismus amblyopia.",
        "metadata": {"year": 2006, "section": "METHODS", "meshes": ["Amblyopia"]},
    },
    {
        "id": "bathing",
        "text": "Syncope during bathing in infants may be aquagenic urticaria.",
        "metadata": {"year": 2011, "section": "RESULTS", "meshes": ["Urticaria"]},
    },
]


@pytest.fixture
def api(serve: Serve) -> tuple[httpx.Client, LiveServer]:
    live = serve(publishers=["publisher"], chunk_size=200, chunk_overlap=40)
    return live.http, live


def search(client: httpx.Client, headers: dict, query: str, **body: object) -> list[dict]:
    response = client.post("/search", json={"query": query, "alpha": 0, **body}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_ingest_search_list_and_delete(api: tuple[httpx.Client, LiveServer]) -> None:
    client, _ = api
    headers = register(client)
    response = client.post("/documents", json={"documents": DOCS}, headers=headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert [(d["id"], d["status"], d["namespace"]) for d in body["documents"]] == [
        ("lace", "created", "private"),
        ("acuity", "created", "private"),
        ("bathing", "created", "private"),
    ]
    assert body["chunks"] == sum(d["chunks"] for d in body["documents"])
    assert body["documents"][0]["chunks"] == 1

    results = search(client, headers, "mitochondria in lace plant leaves")
    assert results[0]["document_id"] == "lace"
    top = results[0]
    assert top["text"].startswith("Programmed cell death")
    assert top["metadata"]["year"] == 2011
    assert top["metadata"]["chunk_index"] == 0
    assert set(top) == {"id", "document_id", "text", "score", "metadata"}

    listing = client.get("/documents", headers=headers).json()
    assert listing["count"] == 3
    assert {d["id"] for d in listing["data"]} == {"lace", "acuity", "bathing"}

    assert client.delete("/documents/lace", headers=headers).status_code == 204
    assert all(
        r["document_id"] != "lace" for r in search(client, headers, "mitochondria lace plant")
    )
    assert client.delete("/documents/lace", headers=headers).status_code == 404
    assert client.get("/documents", headers=headers).json()["count"] == 2


def test_filters_are_honoured_and_bad_ones_name_the_path(
    api: tuple[httpx.Client, LiveServer],
) -> None:
    client, _ = api
    headers = register(client)
    client.post("/documents", json={"documents": DOCS}, headers=headers)
    query = "infants bathing acuity mitochondria"
    assert {r["document_id"] for r in search(client, headers, query, filter={"year": 2011})} == {
        "lace",
        "bathing",
    }
    assert {
        r["document_id"]
        for r in search(client, headers, query, filter={"meshes": {"$in": ["Amblyopia"]}})
    } == {"acuity"}
    assert search(client, headers, query, filter={"year": {"$gt": 2020}}) == []
    dense = client.post(
        "/search",
        json={"query": query, "alpha": 1, "filter": {"section": "RESULTS"}},
        headers=headers,
    )
    assert {r["document_id"] for r in dense.json()["results"]} == {"bathing"}

    bad = client.post(
        "/search",
        json={"query": "x", "filter": {"$and": [{"year": {"$gt": "2010"}}]}},
        headers=headers,
    )
    assert bad.status_code == 422
    detail = bad.json()["detail"][0]
    assert detail["loc"] == ["body", "filter"]
    assert detail["msg"] == "filter.$and[0].year.$gt: expected a number"


def test_reingesting_replaces_and_identical_content_is_not_stored_twice(
    api: tuple[httpx.Client, LiveServer],
) -> None:
    client, live = api
    headers = register(client)
    client.post("/documents", json={"documents": DOCS[:1]}, headers=headers)
    again = client.post("/documents", json={"documents": DOCS[:1]}, headers=headers).json()
    assert again["documents"][0]["status"] == "unchanged"
    assert again["chunks"] == 0

    anonymous = {"text": "Zebrafish regenerate fins quickly."}
    first = client.post("/documents", json={"documents": [anonymous]}, headers=headers).json()
    second = client.post("/documents", json={"documents": [anonymous]}, headers=headers).json()
    assert first["documents"][0]["id"] == second["documents"][0]["id"]
    assert second["documents"][0]["status"] == "unchanged"

    changed = {
        **DOCS[0],
        "text": "Lace plant leaves now speak of zebrafish fins.",
        "metadata": {"year": 2020},
    }
    replaced = client.post("/documents", json={"documents": [changed]}, headers=headers).json()
    assert replaced["documents"][0]["status"] == "updated"
    hits = search(client, headers, "lace plant leaves")
    assert [h["text"] for h in hits if h["document_id"] == "lace"] == [changed["text"]]
    assert hits[0]["metadata"]["year"] == 2020
    store = live.components.store
    namespace = f"user-{client.get('/auth/me', headers=headers).json()['id']}"
    # The old chunks are gone: one document, one chunk each.
    assert len(store.list_ids_sync(prefix="lace#", namespace=namespace)) == 1
    assert client.get("/documents", headers=headers).json()["count"] == 2


@pytest.mark.parametrize(
    ("document", "loc", "words"),
    [
        ({"text": "  "}, ["body", "documents", 1, "text"], "must not be empty"),
        (
            {"text": "x", "metadata": {"year": None}},
            ["body", "documents", 1, "metadata", "year"],
            "no null",
        ),
        (
            {"text": "x", "metadata": {"nested": {"a": 1}}},
            ["body", "documents", 1, "metadata", "nested"],
            "nested",
        ),
        (
            {"text": "x", "metadata": {"tags": [1, 2]}},
            ["body", "documents", 1, "metadata", "tags"],
            "lists of strings",
        ),
        (
            {"text": "x", "metadata": {"text": "mine"}},
            ["body", "documents", 1, "metadata", "text"],
            "set by the service",
        ),
        (
            {"text": "x", "metadata": {"$x": 1}},
            ["body", "documents", 1, "metadata", "$x"],
            "not start with",
        ),
        ({"text": "x", "id": "a#b"}, ["body", "documents", 1, "id"], "without '#'"),
        (
            {"text": "x", "metadata": {"big": "y" * 9000}},
            ["body", "documents", 1, "metadata"],
            "limit is 8192",
        ),
    ],
)
def test_bad_documents_are_422_and_the_store_is_left_as_it_was(
    api: tuple[httpx.Client, LiveServer], document: dict, loc: list, words: str
) -> None:
    client, _ = api
    headers = register(client)
    client.post("/documents", json={"documents": DOCS[:1]}, headers=headers)
    response = client.post("/documents", json={"documents": [DOCS[1], document]}, headers=headers)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    assert words in detail["msg"]
    # All or nothing: the valid document of the batch was not stored either.
    assert [d["id"] for d in client.get("/documents", headers=headers).json()["data"]] == ["lace"]


def test_a_failing_store_loses_nothing_already_stored(serve: Serve) -> None:
    class FlakyStore(EmbeddedVectorStore):
        fail = False

        async def upsert(self, records, *, namespace):
            if self.fail:
                await super().upsert(records[:1], namespace=namespace)  # half-written, then down
                raise ConnectionError("vector store unreachable")
            await super().upsert(records, namespace=namespace)

    store = FlakyStore(None, dimension=384)
    live = serve(store=store)
    client = live.http
    headers = register(client)
    client.post("/documents", json={"documents": DOCS}, headers=headers)
    store.fail = True
    changed = {**DOCS[0], "text": "Entirely new words about zebrafish."}
    response = client.post("/documents", json={"documents": [changed]}, headers=headers)
    assert response.status_code == 503
    assert "vector store" in response.json()["detail"]
    store.fail = False
    hits = search(client, headers, "mitochondria lace plant leaves")
    assert hits[0]["document_id"] == "lace"
    assert hits[0]["text"].startswith("Programmed cell death")
    assert all("zebrafish" not in h["text"] for h in search(client, headers, "zebrafish"))
    assert client.get("/documents", headers=headers).json()["count"] == 3


def test_private_documents_never_reach_another_user(api: tuple[httpx.Client, LiveServer]) -> None:
    client, _ = api
    owner, other = register(client), register(client)
    client.post("/documents", json={"documents": DOCS}, headers=owner)
    assert search(client, other, "mitochondria lace plant acuity bathing") == []
    assert client.get("/documents", headers=other).json() == {"data": [], "count": 0}
    assert client.delete("/documents/lace", headers=other).status_code == 404
    result = stream_chat(client, other, message="Tell me about mitochondria in lace plants")
    assert result.first("sources")["sources"] == []
    # Asking for the private namespace only still means the caller's own.
    assert search(client, other, "mitochondria", namespaces=["private"]) == []
    assert len(search(client, owner, "mitochondria")) == 1


def test_publishers_share_documents_with_everyone(api: tuple[httpx.Client, LiveServer]) -> None:
    client, _ = api
    publisher, reader = register(client, "publisher"), register(client)
    denied = client.post(
        "/documents", json={"documents": DOCS, "namespace": "shared"}, headers=reader
    )
    assert denied.status_code == 403
    assert "PUBLISHERS" in denied.json()["detail"]
    shared = client.post(
        "/documents", json={"documents": DOCS[:1], "namespace": "shared"}, headers=publisher
    )
    assert shared.json()["documents"][0]["namespace"] == "shared"
    hits = search(client, reader, "mitochondria lace plant")
    assert [h["document_id"] for h in hits] == ["lace"]
    assert search(client, reader, "mitochondria lace plant", namespaces=["private"]) == []
    # Readers cannot delete what was published; the publisher can.
    assert client.delete("/documents/lace", headers=reader).status_code == 404
    assert client.delete("/documents/lace?namespace=shared", headers=publisher).status_code == 204
    assert search(client, reader, "mitochondria lace plant") == []


def _pdf(text: str) -> bytes:
    """A minimal one-page PDF holding `text` (built by hand: offsets and all)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


@pytest.mark.parametrize(
    ("filename", "content", "content_type", "expect"),
    [
        ("notes.txt", b"Glaciers retreat as winters warm.", "text/plain", "Glaciers retreat"),
        (
            "guide.md",
            b"# Setup\n\nRun the glacier model twice.",
            "text/markdown",
            "Run the glacier model",
        ),
        (
            "page.html",
            b"<html><head><title>Ice</title><style>p{}</style></head><body><p>Glacier &amp; ice</p>"
            b"<script>var x=1</script></body></html>",
            "text/html",
            "Glacier & ice",
        ),
        (
            "paper.pdf",
            _pdf("Glacier mass balance declines"),
            "application/pdf",
            "Glacier mass balance",
        ),
    ],
)
def test_uploads_of_each_kind(
    api: tuple[httpx.Client, LiveServer],
    filename: str,
    content: bytes,
    content_type: str,
    expect: str,
) -> None:
    client, _ = api
    headers = register(client)
    response = client.post(
        "/documents/upload",
        files={"file": (filename, content, content_type)},
        data={"metadata": json.dumps({"topic": "ice"})},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    hits = search(client, headers, "glacier", filter={"topic": "ice"})
    assert len(hits) == 1
    assert expect in hits[0]["text"]
    assert "var x" not in hits[0]["text"]
    assert "p{}" not in hits[0]["text"]
    assert hits[0]["metadata"]["source"] == filename
    if filename == "page.html":
        assert hits[0]["metadata"]["title"] == "Ice"


@pytest.mark.parametrize(
    ("files", "data", "status", "words"),
    [
        (
            {"file": ("x.exe", b"MZ\x90\x00", "application/octet-stream")},
            {},
            422,
            "unsupported file type",
        ),
        ({"file": ("x.pdf", b"not a pdf at all", "application/pdf")}, {}, 422, "not a PDF"),
        ({"file": ("x.txt", b"\xff\xfe\xfa bad", "text/plain")}, {}, 422, "not UTF-8"),
        ({"file": ("x.txt", b"   \n ", "text/plain")}, {}, 422, "holds no text"),
        ({"file": ("x.txt", b"fine", "text/plain")}, {"metadata": "{not json"}, 422, "not JSON"),
        ({"file": ("x.txt", b"fine", "text/plain")}, {"metadata": "[1]"}, 422, "JSON object"),
        ({"file": ("x.txt", b"y" * 3000, "text/plain")}, {}, 413, "larger than"),
    ],
)
def test_bad_uploads_are_refused_clearly(
    serve: Serve, files: dict, data: dict, status: int, words: str
) -> None:
    live = serve(max_upload_bytes=2048)
    client = live.http
    headers = register(client)
    response = client.post("/documents/upload", files=files, data=data, headers=headers)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    message = detail if isinstance(detail, str) else detail[0]["msg"]
    assert words in message
    assert client.get("/documents", headers=headers).json()["count"] == 0


def test_chat_answers_with_numbered_sources_and_stores_them(serve: Serve) -> None:
    model = fake_model(["Mitochondria matter [1]."])
    live = serve(model=model)
    client = live.http
    headers = register(client)
    client.post("/documents", json={"documents": DOCS}, headers=headers)
    result = stream_chat(
        client,
        headers,
        message="What do mitochondria do in lace plant leaves?",
        retrieval={"alpha": 0, "top_k": 2, "filter": {"year": 2011}},
    )
    assert result.names()[:2] == ["meta", "sources"]
    sources = result.first("sources")["sources"]
    assert next(s["document_id"] for s in sources) == "lace"
    assert all(s["metadata"]["year"] == 2011 for s in sources)
    assert len(sources) <= 2
    system = live.components.models.default.chat.prompts[-1][0].text
    assert '<source id="1">\nProgrammed cell death' in system
    assert "cite" in system
    stored = client.get(
        f"/conversations/{result.first('meta')['conversation_id']}", headers=headers
    ).json()
    assert stored["messages"][1]["sources"] == sources
    assert result.first("done")["timings"]["retrieval_ms"] > 0

    off = stream_chat(client, headers, message="mitochondria", retrieval={"enabled": False})
    assert off.first("sources") == {"sources": [], "query": None}  # no search at all
    bad = client.post(
        "/chat/stream",
        json={"message": "hi", "retrieval": {"filter": {"year": {"$in": 2011}}}},
        headers=headers,
    )
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["msg"] == "filter.year.$in: expected a list of values"


def test_concurrent_ingestion_and_search_stay_consistent(
    api: tuple[httpx.Client, LiveServer],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client, live = api
    headers = register(client)

    def ingest(i: int) -> int:
        doc = {
            "id": f"note-{i}",
            "text": f"Quarterly report number {i} mentions glaciers and budgets.",
        }
        return client.post("/documents", json={"documents": [doc]}, headers=headers).status_code

    def query(_: int) -> int:
        return client.post(
            "/search", json={"query": "glaciers budgets"}, headers=headers
        ).status_code

    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(ingest, range(12))) + list(pool.map(query, range(12)))
        statuses += list(pool.map(lambda i: ingest(i) if i % 2 else query(i), range(12)))
    assert set(statuses) <= {200, 201}
    assert client.get("/documents", headers=headers).json()["count"] == 12
    # The BM25 statistics count each stored chunk once, in memory and in the database.
    stats = live.components.documents.encoder.stats
    assert stats.doc_count == 12
    hits = client.post(
        "/search", json={"query": "glaciers budgets", "top_k": 20, "alpha": 0}, headers=headers
    )
    assert len(hits.json()["results"]) == 12
