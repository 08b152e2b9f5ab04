"""The bundled SmolLM2 model, generating real tokens through the whole service."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from backend.llm import ChatModel
from backend.llm.local import LlamaCppChatModel, build_local_model
from tests.helpers import LiveServer, Serve, make_settings, register, stream_chat

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatModel]:
    handle = build_local_model(make_settings(tmp_path_factory.mktemp("model"), "sqlite://"))
    yield handle
    asyncio.run(handle.aclose())


@pytest.fixture
def real_server(serve: Serve, smollm2: ChatModel) -> LiveServer:
    return serve(model=smollm2)


def test_the_bundled_model_streams_a_real_answer(real_server: LiveServer) -> None:
    with httpx.Client(base_url=real_server.url, timeout=60) as client:
        headers = register(client)
        result = stream_chat(
            client, headers, message="What is the capital of France?", max_tokens=40, temperature=0
        )
        assert result.names()[-1] == "done", result.events[-1]
        tokens = [data["text"] for name, data in result.events if name == "token"]
        assert len(tokens) >= 3
        assert "Paris" in result.text()
        done = result.first("done")
        # Usage comes from the model's own tokenizer: the prompt holds the system prompt.
        assert done["usage"]["prompt_tokens"] > 20
        assert 0 < done["usage"]["completion_tokens"] <= 40
        assert done["finish_reason"] in ("stop", "length")

        conversation_id = result.first("meta")["conversation_id"]
        stored = client.get(f"/conversations/{conversation_id}", headers=headers).json()["messages"]
        assert stored[1]["content"] == result.text()
        assert stored[1]["model"] == "SmolLM2-135M-Instruct"


def test_a_client_leaving_stops_the_local_model(real_server: LiveServer) -> None:
    chat = real_server.components.models.default.chat
    assert isinstance(chat, LlamaCppChatModel)
    with httpx.Client(base_url=real_server.url, timeout=60) as client:
        headers = register(client)
        body = {"message": "Write a very long story about a dragon.", "max_tokens": 1500}
        seen = 0
        with connect_sse(client, "POST", "/chat/stream", json=body, headers=headers) as source:
            for sse in source.iter_sse():
                if sse.event == "meta":
                    conversation_id = sse.json()["conversation_id"]
                if sse.event == "token":
                    seen += 1
                    if seen == 5:
                        assert chat.generating
                        break
        deadline = time.monotonic() + 10
        while chat.generating and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not chat.generating, "the model kept generating after the client left"

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            messages = client.get(f"/conversations/{conversation_id}", headers=headers).json()[
                "messages"
            ]
            if len(messages) == 2 and messages[1]["status"] != "streaming":
                break
            time.sleep(0.05)
        answer = messages[1]
        assert answer["status"] == "interrupted"
        assert 5 <= answer["completion_tokens"] < 1500


def test_concurrent_answers_take_turns_on_the_one_model(real_server: LiveServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with httpx.Client(base_url=real_server.url, timeout=120) as client:
        headers = register(client)

        def ask(question: str) -> list[str]:
            return stream_chat(client, headers, message=question, max_tokens=30).names()

        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(ask, ["Name a colour.", "Name a fruit.", "Name a city."]))
        assert all(names[-1] == "done" and "token" in names for names in results)
        assert client.get("/conversations", headers=headers).json()["count"] == 3
