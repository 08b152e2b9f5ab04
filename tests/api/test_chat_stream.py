"""/chat/stream read on the wire from a real uvicorn server, and /chat."""

from __future__ import annotations

import time

import httpx
import pytest

from backend.llm import ChatModel
from tests.helpers import (
    LiveServer,
    Serve,
    fake_model,
    read_then_leave,
    register,
    stream_chat,
)


def test_events_arrive_in_order_and_tokens_add_up_to_the_stored_answer(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    result = stream_chat(client, headers, message="Hi there")

    names = result.names()
    assert names[:2] == ["meta", "sources"]
    assert names[-1] == "done"
    assert set(names[2:-1]) == {"token"}

    meta = result.first("meta")
    assert set(meta) == {
        "conversation_id",
        "user_message_id",
        "assistant_message_id",
        "model",
        "instance",
    }
    assert meta["instance"] == server.components.settings.instance_name
    assert meta["model"] == "fake-model"
    assert result.first("sources") == {"sources": [], "query": "Hi there"}  # none found
    # Deltas, never the cumulative answer (this fake model writes faster than anyone reads,
    # so the deltas that queued up come as one event).
    assert result.text() == "Hello there, how can I help?"

    done = result.first("done")
    assert done["finish_reason"] == "stop"
    assert done["usage"]["prompt_tokens"] > 0
    assert done["usage"]["completion_tokens"] > 0
    assert set(done["timings"]) == {"retrieval_ms", "query_ms", "ttft_ms", "total_ms"}
    assert done["timings"]["ttft_ms"] <= done["timings"]["total_ms"]

    conversation = client.get(f"/conversations/{meta['conversation_id']}", headers=headers).json()
    assert conversation["title"] == "Hi there"
    user, assistant = conversation["messages"]
    assert (user["id"], user["role"], user["content"]) == (
        meta["user_message_id"],
        "user",
        "Hi there",
    )
    assert assistant["id"] == meta["assistant_message_id"]
    assert assistant["parent_id"] == user["id"]
    assert assistant["content"] == result.text()
    assert assistant["status"] == "complete"
    assert assistant["model"] == "fake-model"
    assert assistant["completion_tokens"] == done["usage"]["completion_tokens"]
    assert assistant["timings"] == done["timings"]


def test_the_wire_format_is_named_events_with_json_data(client: httpx.Client) -> None:
    headers = register(client)
    with client.stream("POST", "/chat/stream", json={"message": "Hi"}, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    blocks = [block for block in body.replace("\r\n", "\n").split("\n\n") if block.strip()]
    assert blocks[0].startswith("event: meta\ndata: {")
    # A token's id counts the characters up to its end; the last event repeats the total.
    reply = "Hello there, how can I help?"
    assert blocks[2] == f'id: {len(reply)}\nevent: token\ndata: {{"text": "{reply}"}}'
    assert blocks[-1].startswith(f"id: {len(reply)}\nevent: done\ndata: {{")


@pytest.mark.parametrize("model", [fake_model(["First answer.", "Second answer."])])
def test_follow_up_turns_carry_the_conversation_history(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    first = stream_chat(client, headers, message="My name is Ada.")
    conversation_id = first.first("meta")["conversation_id"]
    second = stream_chat(
        client, headers, message="What is my name?", conversation_id=conversation_id
    )
    assert second.text() == "Second answer."
    assert second.first("meta")["conversation_id"] == conversation_id

    prompt = server.components.models.default.chat.prompts[-1]
    assert [(m.type, m.text) for m in prompt] == [
        ("system", server.components.settings.system_prompt),
        ("human", "My name is Ada."),
        ("ai", "First answer."),
        ("human", "What is my name?"),
    ]
    messages = client.get(f"/conversations/{conversation_id}", headers=headers).json()["messages"]
    assert [m["content"] for m in messages] == [
        "My name is Ada.",
        "First answer.",
        "What is my name?",
        "Second answer.",
    ]
    # Each message follows the one before it.
    assert [m["parent_id"] for m in messages] == [None] + [m["id"] for m in messages[:-1]]


@pytest.mark.parametrize("model", [fake_model(["x" * 400], context_window=300)])
def test_history_is_pruned_oldest_first_to_fit_the_budget(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    conversation_id = None
    for turn in range(4):
        result = stream_chat(
            client,
            headers,
            message=f"question {turn}",
            conversation_id=conversation_id,
            max_tokens=50,
        )
        conversation_id = result.first("meta")["conversation_id"]
    prompt = server.components.models.default.chat.prompts[-1]
    texts = [m.text for m in prompt]
    # Budget 300 - 50 = 250 tokens at ~4 chars a token: the system prompt, the newest
    # answer (400 chars) and the question fit; older turns were dropped.
    assert texts[0] == server.components.settings.system_prompt
    assert texts[-1] == "question 3"
    assert "question 0" not in texts
    assert "question 1" not in texts
    assert texts[-2] == "x" * 400


@pytest.mark.parametrize(
    "model", [fake_model(["abcdefghijklmnopqrstuvwxyz"], error_on_chunk_number=5)]
)
def test_a_model_failing_mid_stream_sends_an_error_event_and_stores_the_partial_answer(
    client: httpx.Client,
) -> None:
    headers = register(client)
    result = stream_chat(client, headers, message="Hi")
    assert result.names()[-1] == "error"
    assert "done" not in result.names()
    error = result.first("error")
    assert error["code"] == "model_error"
    assert "Traceback" not in error["message"]
    assert error["message"]
    assert result.text() == "abcde"

    conversation_id = result.first("meta")["conversation_id"]
    messages = client.get(f"/conversations/{conversation_id}", headers=headers).json()["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "error"),
    ]
    assert messages[1]["content"] == "abcde"


@pytest.mark.parametrize("model", [fake_model(["slow " * 200], sleep=0.02)])
def test_a_client_leaving_mid_stream_stops_generation_and_stores_interrupted(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    meta, received, _ = read_then_leave(client, headers, 20)
    chat = server.components.models.default.chat
    conversation_url = f"/conversations/{meta['conversation_id']}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        messages = client.get(conversation_url, headers=headers).json()["messages"]
        # The answer's row exists from its first token (`streaming`); its final status is
        # written after the model's generator has been cancelled.
        if len(messages) == 2 and chat.active == 0 and messages[1]["status"] != "streaming":
            break
        time.sleep(0.05)
    assert chat.active == 0
    assert chat.cancelled == 1
    assistant = messages[1]
    assert assistant["status"] == "interrupted"
    assert assistant["finish_reason"] == "cancelled"
    # What was stored is what was generated before the cancel: a prefix of the reply that
    # holds at least what the client saw, and far from the whole reply.
    assert assistant["content"].startswith(received)
    assert len(assistant["content"]) < len("slow " * 200) // 2
    # The user's message was kept too.
    assert messages[0]["content"] == "Hi"


@pytest.mark.parametrize("model", [fake_model(["ok"], sleep=1.6)])
def test_quiet_streams_get_keep_alive_pings(serve: Serve, model: ChatModel) -> None:
    live = serve(model=model, sse_ping_seconds=1)
    http = live.http
    headers = register(http)
    with http.stream("POST", "/chat/stream", json={"message": "Hi"}, headers=headers) as response:
        lines = list(response.iter_lines())
    assert any(line.startswith(": ping") for line in lines)
    assert "event: done" in lines


def test_chat_returns_the_answer_as_one_json_response(client: httpx.Client) -> None:
    headers = register(client)
    response = client.post("/chat", json={"message": "Hello"}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sources"] == []
    message = body["message"]
    assert message["content"] == "Hello there, how can I help?"
    assert message["status"] == "complete"
    assert message["role"] == "assistant"
    stored = client.get(f"/conversations/{body['conversation_id']}", headers=headers).json()
    assert stored["messages"][-1] == message


@pytest.mark.parametrize("model", [fake_model(["boom"], error_on_chunk_number=1)])
def test_chat_reports_a_model_failure_as_502_and_keeps_the_question(client: httpx.Client) -> None:
    headers = register(client)
    response = client.post("/chat", json={"message": "Hello"}, headers=headers)
    assert response.status_code == 502
    assert "model failed" in response.json()["detail"]
    conversations = client.get("/conversations", headers=headers).json()
    assert conversations["count"] == 1
    conversation = client.get(
        f"/conversations/{conversations['data'][0]['id']}", headers=headers
    ).json()
    assert [m["status"] for m in conversation["messages"]] == ["complete", "error"]
