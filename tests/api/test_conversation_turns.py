"""Conversations on the wire: a follow-up searched in context, revising an answer with
written feedback (chains of revisions), editing a question, and walking the branches."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.helpers import (
    LiveServer,
    StreamResult,
    build_app,
    fake_model,
    ingest,
    live_server,
    register,
    stream_chat,
)
from tests.upstream import Scenario, Upstream

METFORMIN = {
    "id": "metformin",
    "text": "Metformin is the first drug for type 2 diabetes. Observational studies of "
    "metformin users report a lower risk of cancer.",
}
SMOKING = {
    "id": "smoking",
    "text": "Does quitting smoking lower the risk of cancer? Quitting lowers the risk of "
    "cancer: the risk of lung cancer falls year after year.",
}
ASPIRIN = {"id": "aspirin", "text": "Aspirin relieves headache and fever in adults."}
KEYWORDS = {"alpha": 0.0, "top_k": 1}  # BM25 alone: the fake embeddings mean nothing


def sse(client: httpx.Client, url: str, headers: dict[str, str], body: Any) -> StreamResult:
    with connect_sse(client, "POST", url, json=body, headers=headers) as source:
        source.response.raise_for_status()
        return StreamResult([(e.event, e.json()) for e in source.iter_sse()])


def located(response: httpx.Response) -> str:
    """The field a 422 names; a 404's message (which says what was not found)."""
    detail = response.json()["detail"]
    if response.status_code == 422:
        return str(detail[0]["loc"][-1])
    assert "not found" in detail
    return "message_id"


def conversation(client: httpx.Client, headers: dict[str, str], conversation_id: str) -> Any:
    response = client.get(f"/conversations/{conversation_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_follow_up_searches_with_the_conversation(client: httpx.Client) -> None:
    headers = register(client)
    ingest(client, headers, METFORMIN, SMOKING, ASPIRIN)

    def first_turn() -> str:
        first = stream_chat(
            client, headers, message="What is metformin used for?", retrieval=KEYWORDS
        )
        # A first question searches for itself, exactly as before.
        assert first.first("sources")["query"] == "What is metformin used for?"
        return str(first.first("meta")["conversation_id"])

    follow_up = "Does it lower the risk of cancer?"
    alone = stream_chat(
        client,
        headers,
        message=follow_up,
        conversation_id=first_turn(),
        retrieval={**KEYWORDS, "query": "question"},
    )
    assert alone.first("sources")["query"] == follow_up
    assert [s["document_id"] for s in alone.first("sources")["sources"]] == ["smoking"]

    conversation_id = first_turn()
    in_context = stream_chat(
        client, headers, message=follow_up, conversation_id=conversation_id, retrieval=KEYWORDS
    )
    sources = in_context.first("sources")
    assert sources["query"] == f"What is metformin used for? … {follow_up}"
    assert [s["document_id"] for s in sources["sources"]] == ["metformin"]
    # Stored with the answer, and given back by /chat too.
    stored = conversation(client, headers, conversation_id)["messages"][-1]
    assert stored["search_query"] == sources["query"]
    response = client.post(
        "/chat",
        json={"message": follow_up, "conversation_id": first_turn(), "retrieval": KEYWORDS},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["search_query"] == sources["query"]
    assert response.json()["message"]["search_query"] == sources["query"]
    assert response.json()["sources"][0]["document_id"] == "metformin"


def test_a_standalone_second_question_searches_for_itself(client: httpx.Client) -> None:
    headers = register(client)
    ingest(client, headers, METFORMIN, SMOKING, ASPIRIN)
    first = stream_chat(client, headers, message="What is metformin used for?", retrieval=KEYWORDS)
    question = "Does quitting smoking lower the risk of lung cancer?"
    second = stream_chat(
        client,
        headers,
        message=question,
        conversation_id=first.first("meta")["conversation_id"],
        retrieval=KEYWORDS,
    )
    assert second.first("sources")["query"] == question


def test_an_unknown_query_way_is_refused(client: httpx.Client) -> None:
    headers = register(client)
    response = client.post(
        "/chat", json={"message": "Hi", "retrieval": {"query": "guess"}}, headers=headers
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "retrieval", "query"]


ANSWERS = ["First answer, far too long.", "Short.", "Short, 2019.", "Fourth.", "Fifth."]


@pytest.mark.parametrize("model", [fake_model(ANSWERS)])
def test_revising_an_answer_writes_a_sibling_from_the_feedback(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    ingest(client, headers, METFORMIN)
    first = stream_chat(client, headers, message="What is metformin?", retrieval=KEYWORDS)
    meta = first.first("meta")
    answer_id, question_id = meta["assistant_message_id"], meta["user_message_id"]

    revised = sse(client, f"/messages/{answer_id}/revise", headers, {"feedback": "shorter"})
    assert revised.names()[:2] == ["meta", "sources"]
    assert revised.names()[-1] == "done"
    assert revised.text() == "Short."
    assert revised.first("meta")["user_message_id"] == question_id  # a sibling
    # The same sources, searched no more; the prompt holds the question, the sources, the
    # previous answer and the feedback, in that order.
    assert revised.first("sources") == first.first("sources")
    prompt = server.components.models.default.chat.prompts[-1]
    texts = [m.text for m in prompt]
    assert "Observational studies of metformin" in texts[0]
    assert texts[1:] == ["What is metformin?", "First answer, far too long.", texts[3]]
    assert "shorter" in texts[3]
    assert prompt[2].type == "ai"

    # A revision of the revision carries the whole chain.
    second_id = revised.first("meta")["assistant_message_id"]
    again = sse(client, f"/messages/{second_id}/revise", headers, {"feedback": "say which year"})
    assert again.text() == "Short, 2019."
    texts = [m.text for m in server.components.models.default.chat.prompts[-1]]
    assert texts[1:3] == ["What is metformin?", "First answer, far too long."]
    assert "shorter" in texts[3]
    assert texts[4] == "Short."
    assert "say which year" in texts[5]

    stored = conversation(client, headers, meta["conversation_id"])
    answers = [m for m in stored["messages"] if m["role"] == "assistant"]
    assert [(a["content"], a["parent_id"]) for a in answers] == [
        ("First answer, far too long.", question_id),
        ("Short.", question_id),
        ("Short, 2019.", question_id),
    ]
    assert [a["revision_of"] for a in answers] == [None, answer_id, second_id]
    assert [a["revision_feedback"] for a in answers] == [None, "shorter", "say which year"]
    assert stored["active_branch"] == [question_id, answers[-1]["id"]]


def test_a_long_chain_keeps_the_latest_feedback_and_drops_the_oldest(
    serve: Any,
) -> None:
    long_answer = "word " * 120
    model = fake_model([long_answer] * 6, context_window=700)
    server = serve(model=model, max_tokens_default=64)
    client = server.http
    headers = register(client)
    first = stream_chat(client, headers, message="Q?", retrieval={"enabled": False})
    answer_id = first.first("meta")["assistant_message_id"]
    for n in range(4):
        result = sse(client, f"/messages/{answer_id}/revise", headers, {"feedback": f"ask {n}"})
        answer_id = result.first("meta")["assistant_message_id"]
    texts = [m.text for m in model.chat.prompts[-1]]  # type: ignore[attr-defined]
    asks = [t for t in texts if "changed as follows" in t]
    assert asks
    assert "ask 3" in asks[-1]
    assert not any("ask 0" in t for t in asks)  # the oldest went first
    assert len(asks) < 4


def test_bad_revisions_are_refused_and_change_nothing(serve: Any) -> None:
    server = serve(model=fake_model(["Slow answer " * 30], sleep=0.05))
    client = server.http
    owner, other = register(client), register(client)
    done = stream_chat(client, owner, message="Q?", retrieval={"enabled": False}, max_tokens=4)
    meta = done.first("meta")
    before = conversation(client, owner, meta["conversation_id"])
    url = f"/messages/{meta['assistant_message_id']}/revise"
    cases = [
        (url, {"feedback": ""}, owner, 422, "feedback"),
        (url, {"feedback": "   "}, owner, 422, "feedback"),
        (url, {"feedback": "x" * 2001}, owner, 422, "feedback"),
        (url, {}, owner, 422, "feedback"),
        (
            f"/messages/{meta['user_message_id']}/revise",
            {"feedback": "f"},
            owner,
            422,
            "message_id",
        ),
        (url, {"feedback": "f"}, other, 404, "message_id"),
        ("/messages/nope/revise", {"feedback": "f"}, owner, 404, "message_id"),
    ]
    for path, body, headers, status, field in cases:
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        assert located(response) == field
    # An answer still being written cannot be revised yet.
    with connect_sse(
        client,
        "POST",
        "/chat/stream",
        json={"message": "Go", "retrieval": {"enabled": False}, "on_disconnect": "finish"},
        headers=owner,
    ) as source:
        streaming = next(e.json() for e in source.iter_sse() if e.event == "meta")
        response = client.post(
            f"/messages/{streaming['assistant_message_id']}/revise",
            json={"feedback": "f"},
            headers=owner,
        )
    assert response.status_code == 409, response.text
    assert "still being written" in response.json()["detail"]
    assert conversation(client, owner, meta["conversation_id"]) == before


@pytest.mark.parametrize("model", [fake_model(["One.", "Two.", "Three.", "Four.", "Five."])])
def test_editing_a_question_makes_a_branch_and_branches_can_be_walked(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    off = {"retrieval": {"enabled": False}}
    first = stream_chat(client, headers, message="First question", **off)
    conversation_id = first.first("meta")["conversation_id"]
    second = stream_chat(
        client, headers, message="Second question", conversation_id=conversation_id, **off
    )
    q1, a1 = first.first("meta")["user_message_id"], first.first("meta")["assistant_message_id"]
    q2, a2 = (second.first("meta")[k] for k in ("user_message_id", "assistant_message_id"))

    edited = sse(client, f"/messages/{q2}/edit", headers, {"message": "Second, edited", **off})
    assert edited.text() == "Three."
    q2b, a2b = (edited.first("meta")[k] for k in ("user_message_id", "assistant_message_id"))
    # The model saw the edited question after the first exchange, not the old question.
    texts = [m.text for m in server.components.models.default.chat.prompts[-1]]
    assert texts[1:] == ["First question", "One.", "Second, edited"]
    detail = conversation(client, headers, conversation_id)
    parents = {m["id"]: m["parent_id"] for m in detail["messages"]}
    assert parents[q2b] == parents[q2] == a1  # siblings: the old branch stays
    assert detail["active_branch"] == [q1, a1, q2b, a2b]

    # Back to the old branch: the next question continues it.
    chosen = client.put(
        f"/conversations/{conversation_id}/branch", json={"message_id": q2}, headers=headers
    )
    assert chosen.status_code == 200, chosen.text
    assert chosen.json()["active_branch"] == [q1, a1, q2, a2]
    assert conversation(client, headers, conversation_id)["active_branch"] == [q1, a1, q2, a2]
    third = stream_chat(
        client, headers, message="Third question", conversation_id=conversation_id, **off
    )
    texts = [m.text for m in server.components.models.default.chat.prompts[-1]]
    assert texts[1:] == ["First question", "One.", "Second question", "Two.", "Third question"]
    assert conversation(client, headers, conversation_id)["active_branch"][-2:] == [
        third.first("meta")["user_message_id"],
        third.first("meta")["assistant_message_id"],
    ]


def test_bad_edits_and_branch_choices_are_refused(client: httpx.Client) -> None:
    owner, other = register(client), register(client)
    first = stream_chat(client, owner, message="Q", retrieval={"enabled": False})
    meta = first.first("meta")
    before = conversation(client, owner, meta["conversation_id"])
    question, answer = meta["user_message_id"], meta["assistant_message_id"]
    cases = [
        (f"/messages/{answer}/edit", {"message": "x"}, owner, 422, "message_id"),
        (f"/messages/{question}/edit", {"message": " "}, owner, 422, "message"),
        (f"/messages/{question}/edit", {"message": "x" * 40_000}, owner, 422, "message"),
        (f"/messages/{question}/edit", {"message": "x"}, other, 404, "message_id"),
    ]
    for path, body, headers, status, field in cases:
        response = client.post(path, json=body, headers=headers)
        assert response.status_code == status, (body, response.text)
        assert located(response) == field
    url = f"/conversations/{meta['conversation_id']}/branch"
    assert client.put(url, json={"message_id": "nope"}, headers=owner).status_code == 404
    assert client.put(url, json={"message_id": question}, headers=other).status_code == 404
    assert client.put(url, json={}, headers=owner).status_code == 422
    assert conversation(client, owner, meta["conversation_id"]) == before


def test_a_remote_model_rewrites_the_follow_up(tmp_path: Any, sqlite_url: str) -> None:
    """RETRIEVAL_QUERY=rewrite with a loopback OpenAI-compatible model: its one line is what
    the follow-up searches for; the answer's own call comes after it."""
    upstream = Upstream("openai")
    models = [{"provider": "openai-compatible", "model": "m", "base_url": "BASE"}]
    with live_server(upstream.app) as model_server:
        models[0]["base_url"] = f"{model_server.url}/v1"
        app = build_app(tmp_path, sqlite_url, llm_models=models, retrieval_query="rewrite")
        with live_server(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
            headers = register(client)
            ingest(client, headers, METFORMIN, SMOKING, ASPIRIN)
            upstream.script(
                Scenario(tokens=["It treats diabetes."]),
                Scenario(tokens=["metformin", " and the", " risk of cancer\n", "extra"]),
                Scenario(tokens=["Yes [1]."]),
            )
            first = stream_chat(client, headers, message="What is metformin?", retrieval=KEYWORDS)
            follow = stream_chat(
                client,
                headers,
                message="Does it lower the risk of cancer?",
                conversation_id=first.first("meta")["conversation_id"],
                retrieval=KEYWORDS,
            )
    assert follow.first("sources")["query"] == "metformin and the risk of cancer"
    assert [s["document_id"] for s in follow.first("sources")["sources"]] == ["metformin"]
    assert follow.text() == "Yes [1]."
    rewrite = upstream.seen[1].body
    assert rewrite["messages"][0]["content"].startswith("You turn the last question")
    assert "User: What is metformin?" in rewrite["messages"][1]["content"]
    assert "Assistant: It treats diabetes." in rewrite["messages"][1]["content"]
    assert rewrite["max_tokens"] == 48
