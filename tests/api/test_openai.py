"""The OpenAI-compatible API and API keys, driven by the official `openai` SDK (sync and
async, streamed and not) and LangChain's ChatOpenAI against a real server."""

from __future__ import annotations

import httpx
import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.helpers import LiveServer, Serve, fake_model, register

REPLY = "Glaciers retreat [1]."


@pytest.fixture
def api(serve: Serve) -> tuple[LiveServer, httpx.Client, str, dict]:
    live = serve(model=fake_model([REPLY]))
    client = live.http
    headers = register(client)
    created = client.post("/auth/api-keys", json={"name": "sdk"}, headers=headers)
    assert created.status_code == 201
    return live, client, created.json()["key"], headers


def sdk(live: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0)


def test_api_keys_are_shown_once_listed_and_revoked(api) -> None:
    _live, client, key, headers = api
    assert key.startswith("rs_")
    assert len(key) > 40
    listed = client.get("/auth/api-keys", headers=headers).json()["data"]
    assert [(k["name"], k["prefix"]) for k in listed] == [("sdk", key[:10])]
    assert key not in str(listed)
    # The key works on the native API too.
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/auth/api-keys", headers=headers).json()["data"][0]["last_used_at"]
    other = register(client)
    assert client.delete(f"/auth/api-keys/{listed[0]['id']}", headers=other).status_code == 404
    assert client.delete(f"/auth/api-keys/{listed[0]['id']}", headers=headers).status_code == 204
    assert client.get("/auth/me", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_models_list(api) -> None:
    live, _, key, _ = api
    models = sdk(live, key).models.list()
    assert [m.id for m in models.data] == ["fake-model"]


def test_a_completion_with_the_sync_sdk(api) -> None:
    live, _, key, _ = api
    completion = sdk(live, key).chat.completions.create(
        model="fake-model",
        messages=[
            {"role": "system", "content": "Answer in one line."},
            {"role": "user", "content": "Earlier question"},
            {"role": "assistant", "content": "Earlier answer"},
            {"role": "user", "content": "What do glaciers do?"},
        ],
        max_tokens=50,
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "fake-model"
    assert completion.usage is not None
    assert completion.usage.total_tokens > 0
    assert completion.model_extra is not None
    assert completion.model_extra["sources"] == []
    prompt = live.components.models.default.chat.prompts[-1]
    operator = live.components.settings.system_prompt  # holds; the client's comes after it
    assert [(m.type, m.text) for m in prompt] == [
        ("system", f"{operator}\n\nAnswer in one line."),
        ("human", "Earlier question"),
        ("ai", "Earlier answer"),
        ("human", "What do glaciers do?"),
    ]


def test_streaming_with_usage_and_sources_with_the_sync_sdk(api) -> None:
    live, client, key, headers = api
    client.post(
        "/documents",
        json={"documents": [{"id": "ice", "text": "Glaciers retreat as the climate warms."}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    stream = sdk(live, key).chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Why do glaciers retreat?"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"retrieval": {"alpha": 0, "top_k": 3}},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    last_choice = next(c for c in reversed(chunks) if c.choices)
    assert last_choice.choices[0].finish_reason == "stop"
    assert last_choice.model_extra is not None
    assert [s["document_id"] for s in last_choice.model_extra["sources"]] == ["ice"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    # Nothing was stored: no conversation id was given.
    assert client.get("/conversations", headers=headers).json()["count"] == 0


async def test_the_async_sdk_streams_and_stores_into_a_conversation(api) -> None:
    live, client, key, headers = api
    conversation = client.post(
        "/conversations", json={"title": "via openai"}, headers=headers
    ).json()
    async_client = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0)
    stream = await async_client.chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": "Hello from the SDK"}],
        stream=True,
        extra_body={"conversation_id": conversation["id"]},
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == REPLY
    completion = await async_client.chat.completions.create(
        model="fake-model", messages=[{"role": "user", "content": "Not stored"}]
    )
    assert completion.choices[0].message.content == REPLY
    await async_client.close()
    messages = client.get(f"/conversations/{conversation['id']}", headers=headers).json()[
        "messages"
    ]
    assert [(m["role"], m["content"]) for m in messages] == [
        ("user", "Hello from the SDK"),
        ("assistant", REPLY),
    ]


async def test_langchain_chat_openai_works_unchanged(api) -> None:
    live, _, key, _ = api
    chat = ChatOpenAI(model="fake-model", base_url=f"{live.url}/v1", api_key=key, max_retries=0)
    assert chat.invoke("Hi").content == REPLY
    parts = [chunk.text async for chunk in chat.astream("Hi")]
    assert "".join(parts) == REPLY
    assert len(parts) > 3


def test_errors_come_in_openai_shape(api) -> None:
    live, _, key, _ = api
    client = sdk(live, key)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "x"}], temperature=5
        )
    assert isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as last:
        client.chat.completions.create(
            model="fake-model", messages=[{"role": "assistant", "content": "x"}]
        )
    assert "last message" in last.value.message
    with pytest.raises(openai.BadRequestError) as filtered:
        client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"retrieval": {"filter": {"year": {"$gt": "x"}}}},
        )
    assert "filter.year.$gt: expected a number" in filtered.value.message
    with pytest.raises(openai.AuthenticationError) as denied:
        sdk(live, "rs_not-a-key").models.list()
    assert denied.value.code == "invalid_api_key"
    raw = httpx.post(
        f"{live.url}/v1/chat/completions",
        json={"model": "fake-model"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_a_model_failure_reaches_the_sdk_as_an_error(serve: Serve) -> None:
    live = serve(model=fake_model(["abcdefgh"], error_on_chunk_number=3))
    client = live.http
    key = client.post("/auth/api-keys", json={}, headers=register(client)).json()["key"]
    with pytest.raises(openai.APIError) as failure:
        list(
            sdk(live, key).chat.completions.create(
                model="fake-model", messages=[{"role": "user", "content": "x"}], stream=True
            )
        )
    assert "model failed" in failure.value.message
    with pytest.raises(openai.InternalServerError) as status:
        sdk(live, key).chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "x"}]
        )
    assert status.value.status_code == 502
