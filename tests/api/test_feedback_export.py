"""What users said, exported for admins: GET /admin/feedback/export and `python -m
backend.cli export-feedback` (ratings, preference pairs, 👎 cases), pseudonymised."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from backend.cli import main
from backend.cli.answers import read_cases
from backend.common.settings import get_settings
from tests.helpers import Serve, fake_model, ingest, register, stream_chat

ANSWERS = [
    "Metformin treats type 2 diabetes, and much else besides [1].",  # A1
    "Metformin treats type 2 diabetes [1].",  # R1: A1 revised "shorter", then 👍
    "A drug for diabetes [1].",  # B0
    "It was approved in 1995 [1].",  # B1
    "It was approved in 1922 [1].",  # B2: regenerated, then 👎
    "Aspirin cures everything.",  # C1 (bob's): 👎
    "The first try.",  # D1
    "The second try.",  # D2: regenerated, then the user goes back to D1
]
METFORMIN = {"id": "metformin", "text": "Metformin is the first drug for type 2 diabetes."}
KEYWORDS = {"alpha": 0.0, "top_k": 1}


def sse(client: httpx.Client, url: str, headers: dict[str, str], body: Any = None) -> Any:
    with connect_sse(client, "POST", url, json=body, headers=headers) as source:
        source.response.raise_for_status()
        events = [(e.event, e.json()) for e in source.iter_sse()]
    return next(data for name, data in events if name == "meta")


def rate(client: httpx.Client, headers: dict[str, str], message_id: str, rating: int,
         comment: str) -> None:  # fmt: skip
    response = client.post(
        f"/messages/{message_id}/feedback",
        json={"rating": rating, "comment": comment},
        headers=headers,
    )
    assert response.status_code == 201, response.text


def conversations(client: httpx.Client) -> dict[str, str]:
    """Alice's and bob's conversations; their answers' ids by text."""
    alice, bob = register(client, "alice"), register(client, "bob")
    ingest(client, alice, METFORMIN)
    ids: dict[str, str] = {}

    def chat(headers: dict[str, str], message: str, conversation_id: str | None = None) -> Any:
        meta = stream_chat(
            client, headers, message=message, conversation_id=conversation_id,
            retrieval=KEYWORDS,
        ).first("meta")  # fmt: skip
        ids[ANSWERS[len(ids)]] = meta["assistant_message_id"]
        return meta

    first = chat(alice, "What is metformin?")
    revised = sse(client, f"/messages/{first['assistant_message_id']}/revise", alice,
                  {"feedback": "shorter"})  # fmt: skip
    ids[ANSWERS[1]] = revised["assistant_message_id"]
    rate(client, alice, ids[ANSWERS[1]], 1, "good")

    second = chat(alice, "What is metformin for?")
    chat(alice, "When was it approved?", second["conversation_id"])
    again = sse(client, f"/conversations/{second['conversation_id']}/regenerate", alice)
    ids[ANSWERS[4]] = again["assistant_message_id"]
    rate(client, alice, ids[ANSWERS[4]], -1, "wrong year")

    ids[ANSWERS[5]] = chat(bob, "Does aspirin cure everything?")["assistant_message_id"]
    rate(client, bob, ids[ANSWERS[5]], -1, "made up")

    third = chat(alice, "Try it")
    regenerated = sse(client, f"/conversations/{third['conversation_id']}/regenerate", alice)
    ids[ANSWERS[7]] = regenerated["assistant_message_id"]
    back = client.put(
        f"/conversations/{third['conversation_id']}/branch",
        json={"message_id": ids[ANSWERS[6]]},
        headers=alice,
    )
    assert back.status_code == 200, back.text
    return ids


def export(client: httpx.Client, headers: dict[str, str], **params: Any) -> list[Any]:
    response = client.get("/admin/feedback/export", params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


def summary(records: list[Any], ids: dict[str, str]) -> set[tuple[Any, ...]]:
    """Each record as (type, what it is about), with answers by their text."""
    text = {v: k for k, v in ids.items()}
    shown: set[tuple[Any, ...]] = set()
    for r in records:
        if r["type"] == "rating":
            shown.add(("rating", r["answer"]["text"], r["rating"], r["comment"]))
        elif r["type"] == "case":
            shown.add(("case", text[r["id"]], r["question"], r["comment"]))
        else:
            chosen, rejected = r["chosen"]["text"], r["rejected"]["text"]
            shown.add(("preference", chosen, rejected, r["reason"], r["feedback"]))
    return shown


@pytest.mark.parametrize("model", [fake_model(ANSWERS)])
def test_admins_export_ratings_pairs_and_cases(
    serve: Serve,
    model: Any,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = serve(model=model, database_url=database_url).http
    ids = conversations(client)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ENVIRONMENT", "development")
    get_settings.cache_clear()  # the command line's settings: from the environment just set
    admin = register(client, "root")
    assert main(["users", "add", "root", "--admin"]) == 0  # as an operator grants it

    # Only admins.
    assert client.get("/admin/feedback/export").status_code == 401
    refused = client.get("/admin/feedback/export", headers=register(client, "mallory"))
    assert refused.status_code == 403
    assert "admin" in refused.json()["detail"]

    records = export(client, admin)
    a1, r1, _, b1, b2, c1, d1, d2 = ANSWERS
    assert summary(records, ids) == {
        ("rating", r1, 1, "good"),
        ("rating", b2, -1, "wrong year"),
        ("rating", c1, -1, "made up"),
        ("case", b2, "When was it approved?", "wrong year"),
        ("case", c1, "Does aspirin cure everything?", "made up"),
        # 👍 over not rated: the revision, with the feedback it was revised after
        ("preference", r1, a1, "rating", "shorter"),
        ("preference", b1, b2, "rating", "wrong year"),  # not rated over 👎
        ("preference", d1, d2, "regeneration", None),  # the branch the user went back to
    }
    case = next(r for r in records if r["type"] == "case" and r["id"] == ids[b2])
    assert case["history"] == [
        {"role": "user", "content": "What is metformin for?"},
        {"role": "assistant", "content": ANSWERS[2]},
    ]
    assert case["bad_answer"] == b2
    assert [s["document_id"] for s in case["sources"]] == ["metformin"]
    assert case["sources"][0]["text"] == METFORMIN["text"]

    # Pseudonyms: one per user, stable, and no username anywhere.
    users = {r["user"] for r in records}
    assert len(users) == 2
    assert all(u.startswith("user-") for u in users)
    body = json.dumps(records)
    assert "alice" not in body
    assert "bob" not in body
    assert export(client, admin) == records
    named = export(client, admin, usernames="true", kinds="cases")
    assert {r["user"] for r in named} == {"alice", "bob"}
    assert {r["type"] for r in named} == {"case"}

    # Since: only what was said since then.
    assert export(client, admin, since="2999-01-01T00:00:00Z") == []
    assert len(export(client, admin, since="2000-01-01T00:00:00+00:00")) == len(records)

    # Bad choices are 4xx naming the parameter.
    for params, field in (
        ({"kinds": "ratings,bogus"}, "kinds"),
        ({"kinds": ","}, "kinds"),
        ({"since": "2026-01-01T00:00:00"}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"kinds": "x" * 101}, "kinds"),
    ):
        response = client.get("/admin/feedback/export", params=params, headers=admin)
        assert response.status_code == 422, (params, response.text)
        assert response.json()["detail"][0]["loc"][-1] == field, response.text

    # The command line writes the same records, to a file or as a dataset folder.
    out = tmp_path / "export" / "feedback.ndjson"
    assert main(["export-feedback", "--out", str(out)]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == records
    folder = tmp_path / "feedback-dataset"
    assert main(["export-feedback", "--hf-dataset", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "cases.jsonl", "preferences.jsonl", "ratings.jsonl",
    ]  # fmt: skip
    card = (folder / "README.md").read_text()
    assert "- config_name: cases\n  data_files: cases.jsonl" in card
    assert len((folder / "preferences.jsonl").read_text().splitlines()) == 3
    assert main(["export-feedback", "--kinds", "nope"]) == 2

    # The cases are what eval-answers --cases reads.
    cases = {q.id: q for q in read_cases(out)}
    assert set(cases) == {ids[b2], ids[c1]}
    assert cases[ids[b2]].history == [("user", "What is metformin for?"),
                                      ("assistant", ANSWERS[2])]  # fmt: skip
    assert cases[ids[b2]].passages[0].text == METFORMIN["text"]
    assert cases[ids[c1]].passages == []
