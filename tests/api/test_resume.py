"""Answers that outlive their readers: saved while they stream, resumed from an event id
on the same replica or another, swept when their writer dies."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from backend.db import repository
from backend.db.models import Message, utcnow
from backend.llm import ChatModel
from tests.helpers import (
    LiveServer,
    Serve,
    fake_model,
    first_answer,
    read_then_leave,
    register,
    wait_until,
)

REPLY = "".join(f"word{n} " for n in range(60))  # 360 characters


@pytest.fixture
def model() -> ChatModel:
    return fake_model([REPLY], sleep=0.01)  # one character each 10 ms: 3.6 s in all


def resume(
    client: httpx.Client, headers: dict[str, str], message_id: str, last_id: str
) -> list[tuple[str, dict[str, Any], str]]:
    with connect_sse(
        client,
        "GET",
        f"/messages/{message_id}/stream",
        headers={**headers, "Last-Event-ID": last_id},
    ) as source:
        source.response.raise_for_status()
        return [(sse.event, sse.json(), sse.id) for sse in source.iter_sse()]


def text_of(events: list[tuple[str, dict[str, Any], str]]) -> str:
    return "".join(data["text"] for name, data, _ in events if name == "token")


def stored(client: httpx.Client, headers: dict[str, str], meta: dict[str, Any]) -> dict:
    messages = client.get(f"/conversations/{meta['conversation_id']}", headers=headers).json()
    return next(m for m in messages["messages"] if m["id"] == meta["assistant_message_id"])


def test_a_reader_that_pauses_receives_exactly_the_stored_answer(client: httpx.Client) -> None:
    headers = register(client)
    events: list[str] = []
    with connect_sse(
        client, "POST", "/chat/stream", json={"message": "Hi"}, headers=headers
    ) as source:
        for sse in source.iter_sse():
            if sse.event == "meta":
                meta = sse.json()
            if sse.event == "token":
                events.append(sse.json()["text"])
                if len(events) == 3:
                    time.sleep(0.5)  # the reader pauses; about 50 characters queue up
    assert "".join(events) == REPLY == stored(client, headers, meta)["content"]


def test_an_answer_is_saved_while_it_streams(client: httpx.Client) -> None:
    headers = register(client)
    meta, received, _ = read_then_leave(client, headers, 40, on_disconnect="finish")
    time.sleep(1.0)  # at least one save later
    during = stored(client, headers, meta)
    assert during["status"] == "streaming"
    assert during["content"].startswith(received)  # all the reader saw, and more
    assert len(received) < len(during["content"]) < len(REPLY)


def test_a_reader_resumes_from_its_last_event_id_and_follows_live(
    client: httpx.Client,
) -> None:
    headers = register(client)
    meta, received, last_id = read_then_leave(client, headers, 30, on_disconnect="finish")
    events = resume(client, headers, meta["assistant_message_id"], last_id)
    names = [name for name, _, _ in events]
    assert names[:2] == ["meta", "sources"]
    assert names[-1] == "done"
    assert received + text_of(events) == REPLY  # nothing lost, nothing repeated
    assert events[-1][2] == str(len(REPLY))
    assert len([n for n in names if n == "token"]) > 1  # it went on live
    assert stored(client, headers, meta)["status"] == "complete"
    # Once ended, the same id replays the rest at once; from the end, nothing but `done`.
    assert received + text_of(resume(client, headers, meta["assistant_message_id"], last_id)) == (
        REPLY
    )
    assert text_of(resume(client, headers, meta["assistant_message_id"], str(len(REPLY)))) == ""


def test_without_finish_a_disconnect_stops_the_answer(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    meta, received, last_id = read_then_leave(client, headers, 30)  # the API's default: stop
    wait_until(lambda: stored(client, headers, meta)["status"] != "streaming")
    answer = stored(client, headers, meta)
    assert answer["status"] == "interrupted"
    events = resume(client, headers, meta["assistant_message_id"], last_id)
    assert events[-1][0] == "error"
    assert events[-1][1]["code"] == "interrupted"
    assert received + text_of(events) == answer["content"]


def test_stop_ends_an_answer_that_would_finish(client: httpx.Client) -> None:
    headers = register(client)
    meta, received, last_id = read_then_leave(client, headers, 30, on_disconnect="finish")
    message_id = meta["assistant_message_id"]
    assert client.post(f"/messages/{message_id}/stop", headers=register(client)).status_code == 404
    assert client.post(f"/messages/{message_id}/stop", headers=headers).status_code == 202
    events = resume(client, headers, message_id, last_id)
    assert events[-1][1]["code"] == "interrupted"
    answer = stored(client, headers, meta)
    assert answer["status"] == "interrupted"
    assert received + text_of(events) == answer["content"]
    assert len(answer["content"]) < len(REPLY)


def test_another_replica_resumes_through_the_database(
    serve: Serve, model: ChatModel, database_url: str
) -> None:
    writer = serve(model=model, database_url=database_url)
    reader = serve(model=model, database_url=database_url)  # one database, two replicas
    headers = register(writer.http)
    meta, received, last_id = read_then_leave(writer.http, headers, 30, on_disconnect="finish")
    events = resume(reader.http, headers, meta["assistant_message_id"], last_id)
    assert events[0][1]["instance"] == writer.components.settings.instance_name
    assert received + text_of(events) == REPLY
    assert events[-1][0] == "done"


def wait_for_status(
    client: httpx.Client, headers: dict[str, str], meta: dict[str, Any], wanted: str
) -> dict[str, Any]:
    def answer() -> dict[str, Any] | None:
        found = stored(client, headers, meta)
        return found if found["status"] == wanted else None

    return wait_until(answer, what=f"the answer never became {wanted}")


def test_another_replica_stops_an_answer_through_the_database(
    serve: Serve, model: ChatModel, database_url: str
) -> None:
    writer = serve(model=model, database_url=database_url)
    other = serve(model=model, database_url=database_url)
    headers = register(writer.http)
    meta, received, last_id = read_then_leave(writer.http, headers, 30, on_disconnect="finish")
    message_id = meta["assistant_message_id"]
    wait_for_status(other.http, headers, meta, "streaming")  # its row is in
    stranger = register(other.http)
    assert other.http.post(f"/messages/{message_id}/stop", headers=stranger).status_code == 404
    stopping = other.http.post(f"/messages/{message_id}/stop", headers=headers)
    assert (stopping.status_code, stopping.json()) == (202, {"status": "stopping"})
    answer = wait_for_status(other.http, headers, meta, "interrupted")  # by the writer
    assert answer["content"].startswith(received)
    assert len(answer["content"]) < len(REPLY)
    events = resume(writer.http, headers, message_id, last_id)
    assert events[-1][1]["code"] == "interrupted"
    assert received + text_of(events) == answer["content"]
    again = other.http.post(f"/messages/{message_id}/stop", headers=headers)
    assert (again.status_code, again.json()) == (202, {"status": "interrupted"})


def test_an_answer_in_one_json_response_is_stopped_like_a_stream(
    serve: Serve, model: ChatModel, sqlite_url: str
) -> None:
    writer = serve(model=model, database_url=sqlite_url)
    other = serve(model=model, database_url=sqlite_url)
    headers = register(writer.http)
    with ThreadPoolExecutor(1) as pool:
        asked = pool.submit(writer.http.post, "/chat", json={"message": "Hi"}, headers=headers)
        listed = wait_until(
            lambda: other.http.get("/conversations", headers=headers).json()["data"]
        )
        meta = {"conversation_id": listed[0]["id"]}
        answer = wait_until(lambda: first_answer(other.http, headers, meta["conversation_id"]))
        stop = other.http.post(f"/messages/{answer['id']}/stop", headers=headers)
        assert stop.json() == {"status": "stopping"}
        response = asked.result(timeout=10)
    assert response.status_code == 200
    message = response.json()["message"]
    assert message["status"] == "interrupted"
    assert 0 < len(message["content"]) < len(REPLY)
    meta["assistant_message_id"] = answer["id"]
    assert stored(other.http, headers, meta)["content"] == message["content"]


def test_resuming_is_only_for_the_owner_and_a_real_event_id(client: httpx.Client) -> None:
    owner, other = register(client), register(client)
    meta, _, _ = read_then_leave(client, owner, 10, on_disconnect="finish")
    url = f"/messages/{meta['assistant_message_id']}/stream"
    assert client.get(url, headers=other).status_code == 404
    assert client.get("/messages/no-such-id/stream", headers=owner).status_code == 404
    refused = client.get(url, headers={**owner, "Last-Event-ID": "1e9x"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["header", "last-event-id"]
    assert client.get(url, headers=owner, params={"after": -1}).status_code == 422
    question = meta["user_message_id"]
    assert client.get(f"/messages/{question}/stream", headers=owner).status_code == 422


async def test_answers_whose_writer_died_are_swept_with_their_text(server: LiveServer) -> None:
    components = server.components
    async with components.sessions() as session:
        user = await repository.create_user(session=session, username="s", password_hash="x")
        conversation = await repository.create_conversation(
            session=session, user_id=user.id, title="t"
        )
        rows = {}
        for name, age in (("dead", 60), ("alive", 0)):
            rows[name] = await repository.add_message(
                session=session,
                conversation=conversation,
                role="assistant",
                content=f"{name} text so far",
                parent_id=None,
                status="streaming",
                instance="crashed-replica",
                updated_at=utcnow() - timedelta(seconds=age),
            )
        await session.commit()
    assert await components.recorder.sweep() == 1
    async with components.sessions() as session:
        dead = await session.get(Message, rows["dead"].id)
        alive = await session.get(Message, rows["alive"].id)
    assert dead is not None
    assert alive is not None
    assert (dead.status, dead.content) == ("interrupted", "dead text so far")
    assert alive.status == "streaming"
