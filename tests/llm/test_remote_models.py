"""Remote models through the real langchain-huggingface / huggingface_hub and
langchain-openai clients, against loopback servers; what the SSE client receives and what
is stored, for every way a remote model can behave."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.llm.wire import ChatWire
from backend.services.prompt import COMPACT_STOP
from tests.helpers import LiveServer, StreamResult, build_app, live_server, register, stream_chat
from tests.upstream import Scenario, Upstream

TOKEN = "hf_test_token_123"
LLAMA = "meta-llama/Meta-Llama-3-8B-Instruct"
FAST = {
    "hf_token": TOKEN,
    "llm_first_token_timeout": 1.0,
    "llm_token_timeout": 0.5,
    "llm_max_retries": 2,
    "llm_retry_base_seconds": 0.01,
    "llm_retry_max_wait_seconds": 0.5,
}


@pytest.fixture
def tgi() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream("tgi")
    with live_server(upstream.app) as live:
        yield upstream, live.url


@pytest.fixture
def openai_server() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream("openai")
    with live_server(upstream.app) as live:
        yield upstream, live.url


class Service:
    def __init__(self, live: LiveServer, client: httpx.Client) -> None:
        self.live, self.client = live, client
        self.headers = register(client)

    def chat(self, message: str = "Hello?", **body: Any) -> StreamResult:
        return stream_chat(
            self.client, self.headers, message=message, retrieval={"enabled": False}, **body
        )

    def stored(self, result: StreamResult) -> dict[str, Any]:
        conversation_id = result.first("meta")["conversation_id"]
        messages = self.client.get(
            f"/conversations/{conversation_id}", headers=self.headers
        ).json()["messages"]
        return messages[-1]


@pytest.fixture
def service(tmp_path: Path, sqlite_url: str):
    started: list[Any] = []

    def start(models: list[dict[str, Any]], **settings: Any) -> Service:
        app = build_app(tmp_path, sqlite_url, llm_models=models, **{**FAST, **settings})
        context = live_server(app)
        live = context.__enter__()
        client = httpx.Client(base_url=live.url, timeout=60)
        started.append((context, client))
        return Service(live, client)

    yield start
    for context, client in started:
        client.close()
        context.__exit__(None, None, None)


def hf(url: str, **spec: Any) -> dict[str, Any]:
    return {"provider": "huggingface", "model": LLAMA, "base_url": url, **spec}


def test_a_tgi_endpoint_streams_and_gets_the_real_model_name(service, tgi, caplog) -> None:
    upstream, url = tgi
    caplog.set_level(logging.DEBUG)
    svc = service([hf(url, id="llama3")])
    result = svc.chat(max_tokens=64, temperature=0.2, top_p=0.9, stop=["\n\n"])
    assert result.names()[:2] == ["meta", "sources"]
    assert result.names()[-1] == "done"
    assert result.first("meta")["model"] == "llama3"
    assert result.text() == "Hello from upstream."
    done = result.first("done")
    assert done["model"] == "llama3"
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"prompt_tokens": 11, "completion_tokens": 4}  # the server's own count

    [seen] = upstream.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == LLAMA  # not "dummy", not the URL
    assert seen.body["stream"] is True
    assert (seen.body["max_tokens"], seen.body["temperature"], seen.body["top_p"]) == (64, 0.2, 0.9)
    assert seen.body["stop"] == ["\n\n"]
    # HF_TOKEN goes only to Hugging Face hosts, never to a self-hosted URL.
    assert "authorization" not in seen.headers
    assert [m["role"] for m in seen.body["messages"]] == ["system", "user"]

    stored = svc.stored(result)
    assert (stored["status"], stored["model"], stored["content"]) == (
        "complete",
        "llama3",
        "Hello from upstream.",
    )
    assert TOKEN not in caplog.text


def test_a_self_hosted_tgi_gets_llm_api_key(service, tgi) -> None:
    upstream, url = tgi
    svc = service([hf(url)], llm_api_key="tgi-secret")
    assert svc.chat().text() == "Hello from upstream."
    assert upstream.seen[0].headers["authorization"] == "Bearer tgi-secret"


def test_the_hf_router_is_reached_by_repo_id(service, tgi, monkeypatch) -> None:
    upstream, url = tgi
    loopback = httpx.URL(url)

    class ToLoopback(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            request.url = request.url.copy_with(
                scheme="http", host=loopback.host, port=loopback.port
            )
            return await self.inner.handle_async_request(request)

    monkeypatch.setattr(ChatWire, "default_transport", ToLoopback())
    svc = service([{"provider": "huggingface", "model": LLAMA}])
    result = svc.chat()
    assert result.text() == "Hello from upstream."
    assert result.first("meta")["model"] == LLAMA
    [seen] = upstream.seen
    assert seen.headers["host"] == "router.huggingface.co"
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.path == "/v1/chat/completions"
    assert seen.body["model"] == LLAMA


def test_an_openai_compatible_server_streams(service, openai_server) -> None:
    upstream, url = openai_server
    svc = service(
        [
            {
                "id": "vllm",
                "provider": "openai-compatible",
                "model": "Qwen/Qwen2.5-7B-Instruct",
                "base_url": url,
            }
        ],
        llm_api_key="sk-test-key",
    )
    result = svc.chat(max_tokens=32)
    assert result.text() == "Hello from upstream."
    assert result.first("done")["usage"] == {"prompt_tokens": 11, "completion_tokens": 4}
    [seen] = upstream.seen
    assert seen.body["model"] == "Qwen/Qwen2.5-7B-Instruct"
    assert seen.body["max_tokens"] == 32
    assert seen.headers["authorization"] == "Bearer sk-test-key"


@pytest.mark.parametrize("flavour", ["tgi", "openai"])
def test_429_then_success_is_retried_invisibly(service, flavour) -> None:
    upstream = Upstream(flavour)
    upstream.script(Scenario(status=429, error="rate limited", headers={"Retry-After": "0"}))
    with live_server(upstream.app) as live:
        spec = (
            hf(live.url)
            if flavour == "tgi"
            else {"provider": "openai-compatible", "model": "m", "base_url": live.url}
        )
        svc = service([spec])
        result = svc.chat()
    assert result.names()[-1] == "done"
    assert result.text() == "Hello from upstream."
    assert len(upstream.seen) == 2
    assert svc.stored(result)["status"] == "complete"


def test_503_loading_waits_the_estimated_time_then_succeeds(service, tgi) -> None:
    upstream, url = tgi
    upstream.script(Scenario(status=503, error="Model is currently loading", estimated_time=0.3))
    svc = service([hf(url)])
    result = svc.chat()
    assert result.text() == "Hello from upstream."
    first, second = upstream.seen
    assert second.at - first.at >= 0.28  # honoured estimated_time


def test_a_retry_after_beyond_the_ceiling_is_capped(service, tgi) -> None:
    upstream, url = tgi
    upstream.script(Scenario(status=429, headers={"Retry-After": "120"}))
    svc = service([hf(url)])
    result = svc.chat()
    assert result.names()[-1] == "done"
    first, second = upstream.seen
    assert second.at - first.at < 3  # the 0.5 s ceiling, not 120 s


def test_retries_are_bounded_and_the_wait_is_said(service, tgi) -> None:
    upstream, url = tgi
    upstream.script(
        *[Scenario(status=503, error="Model is currently loading", estimated_time=20)] * 5
    )
    svc = service([hf(url)])
    result = svc.chat()
    assert result.names() == ["meta", "error"]
    error = result.first("error")
    assert error["code"] == "model_loading"
    assert error["message"] == "The model is loading; try again in 20 s."
    assert len(upstream.seen) == 3  # one try and two retries
    stored = svc.stored(result)
    assert (stored["status"], stored["content"]) == ("error", "")


def test_a_rejected_token_is_not_retried_and_not_echoed(service, tgi) -> None:
    upstream, url = tgi
    upstream.script(
        Scenario(status=401, error=f"Invalid credentials in Authorization header: {TOKEN}")
    )
    svc = service([hf(url)])
    result = svc.chat()
    error = result.first("error")
    assert error["code"] == "model_auth"
    assert "rejected the token" in error["message"]
    assert TOKEN not in str(result.events)
    assert len(upstream.seen) == 1


def test_no_first_token_in_time_is_a_timeout(service, tgi) -> None:
    upstream, url = tgi
    upstream.default = Scenario(delay_first=3)
    svc = service([hf(url)], llm_max_retries=1)
    result = svc.chat()
    assert result.first("error")["code"] == "model_timeout"
    assert len(upstream.seen) == 2


def test_a_stall_between_tokens_ends_the_answer_and_keeps_it(service, tgi) -> None:
    upstream, url = tgi
    upstream.script(Scenario(stall_after=2, stall_seconds=5))
    svc = service([hf(url)])
    result = svc.chat()
    assert result.text() == "Hello from"
    assert result.names()[-1] == "error"
    assert result.first("error")["code"] == "model_stalled"
    assert len(upstream.seen) == 1  # nothing retried after the first token
    stored = svc.stored(result)
    assert (stored["status"], stored["content"]) == ("error", "Hello from")


def test_an_error_payload_mid_stream(service, tgi) -> None:
    upstream, url = tgi
    upstream.script(Scenario(error_after=2))
    svc = service([hf(url)])
    result = svc.chat()
    assert result.text() == "Hello from"
    error = result.first("error")
    assert error["code"] == "model_error"
    assert "CUDA" not in error["message"]
    assert svc.stored(result)["status"] == "error"


@pytest.mark.parametrize("flavour", ["tgi", "openai"])
def test_a_connection_cut_mid_stream(service, flavour) -> None:
    upstream = Upstream(flavour)
    upstream.script(Scenario(cut_after=3))
    with live_server(upstream.app) as live:
        spec = (
            hf(live.url)
            if flavour == "tgi"
            else {"provider": "openai-compatible", "model": "m", "base_url": live.url}
        )
        svc = service([spec])
        result = svc.chat()
    assert result.text() == "Hello from upstream"
    assert result.first("error")["code"] == "model_connection_lost"
    stored = svc.stored(result)
    assert (stored["status"], stored["content"]) == ("error", "Hello from upstream")


def test_an_unreachable_server_is_retried_then_reported(service, caplog) -> None:
    svc = service([hf("http://127.0.0.1:9")])
    with caplog.at_level(logging.WARNING, logger="backend.llm.streaming"):
        result = svc.chat()
    assert result.first("error")["code"] == "model_unreachable"
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert len(retries) == 2, retries  # llm_max_retries: two retries after the first try


def test_fallback_to_the_next_model_names_the_one_that_answered(
    service, tgi, openai_server
) -> None:
    primary, primary_url = tgi
    backup, backup_url = openai_server
    primary.default = Scenario(status=503, error="overloaded", error_type="overloaded")
    svc = service(
        [
            hf(primary_url, id="llama3"),
            {"id": "backup", "provider": "openai-compatible", "model": "b", "base_url": backup_url},
        ]
    )
    result = svc.chat()
    assert result.first("meta")["model"] == "backup"
    assert result.first("done")["model"] == "backup"
    assert result.text() == "Hello from upstream."
    assert len(primary.seen) == 3
    assert len(backup.seen) == 1
    assert svc.stored(result)["model"] == "backup"

    primary.default = Scenario(status=401)  # not retried: straight to the next model
    before = len(primary.seen)
    assert svc.chat().first("meta")["model"] == "backup"
    assert len(primary.seen) == before + 1


def test_routing_by_request_and_by_rule(service, tgi, openai_server) -> None:
    big, big_url = tgi
    small, small_url = openai_server
    small.default = Scenario(tokens=["Short", "."])
    svc = service(
        [
            hf(big_url, id="llama3"),
            {"id": "small", "provider": "openai-compatible", "model": "s", "base_url": small_url},
        ],
        llm_route_short_model="small",
        llm_route_short_max_chars=20,
    )
    assert svc.chat("Hi!").first("meta")["model"] == "small"  # short: the rule
    assert (len(big.seen), len(small.seen)) == (0, 1)
    assert svc.chat("A much longer question about many things?").first("meta")["model"] == "llama3"
    assert svc.chat("Hi!", model="llama3").first("meta")["model"] == "llama3"  # the request wins
    assert (len(big.seen), len(small.seen)) == (2, 1)

    models = svc.client.get("/models", headers=svc.headers).json()["data"]
    assert [(m["id"], m["provider"], m["default"]) for m in models] == [
        ("llama3", "huggingface", True),
        ("small", "openai-compatible", False),
    ]
    unknown = svc.client.post(
        "/chat/stream", json={"message": "x", "model": "gpt-9"}, headers=svc.headers
    )
    assert unknown.status_code == 422
    assert (
        unknown.json()["detail"][0]["msg"] == "unknown model 'gpt-9'; choose one of: llama3, small"
    )
    ready = svc.client.get("/ready").json()
    assert ready["model"] == {"name": "llama3", "provider": "huggingface", "loaded": True}


def test_when_every_model_fails_the_user_gets_one_clear_error(service, tgi) -> None:
    upstream, url = tgi
    upstream.default = Scenario(status=402, error="payment required")
    svc = service([hf(url, id="a"), hf(url, id="b")])
    result = svc.chat()
    assert result.names() == ["meta", "error"]
    assert result.first("error")["code"] == "model_payment"
    assert len(upstream.seen) == 2


def test_a_model_may_ask_for_the_compact_prompt(service, tgi) -> None:
    upstream, url = tgi
    svc = service([hf(url, id="small", prompt="compact"), hf(url, id="large")])
    svc.chat(stop=["\n\n"], model="small")
    svc.chat(stop=["\n\n"], model="large")
    small, large = upstream.seen
    assert small.body["stop"] == ["\n\n", *COMPACT_STOP]
    assert small.body["messages"][-1]["content"] == "Question: Hello?"
    assert large.body["stop"] == ["\n\n"]  # remote models read the full prompt by default
    assert large.body["messages"][-1]["content"] == "Hello?"
