"""Remote chat models: Hugging Face (serverless router by repo id, or a dedicated endpoint /
TGI server by URL) and any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI).

Each is described by its LangChain chat model (`ChatHuggingFace`, `ChatOpenAI`), as the
rest of LangChain expects, and streamed by `ChatWire` (backend.llm.wire), which speaks
the same chat-completions requests without an SDK in the per-token loop."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint
from langchain_openai import ChatOpenAI

from backend.common.settings import ModelSpec, Settings, reveal
from backend.llm.base import LangChainModel, StreamItem
from backend.llm.wire import ChatWire, default_params, wire_timeout

log = logging.getLogger(__name__)

DEFAULT_REMOTE_CONTEXT = 8192  # Llama-3-8B-Instruct
HF_ROUTER = "https://router.huggingface.co/v1"


def chat_completions_url(base_url: str) -> str:
    """…/v1/chat/completions under a server's root, or under a URL that ends in /v1."""
    base = base_url.rstrip("/")
    return f"{base if base.endswith('/v1') else base + '/v1'}/chat/completions"


@dataclass
class RemoteModel(LangChainModel):
    """A model on a server that speaks OpenAI's chat format: `chat` (ChatHuggingFace,
    ChatOpenAI) describes it, `wire` streams it, without an SDK in the per-token loop."""

    wire: ChatWire = field(kw_only=True)

    def stream(
        self, messages: list[BaseMessage], params: Mapping[str, Any]
    ) -> AsyncIterator[StreamItem]:
        return self.wire.stream(messages, params)

    async def aclose(self) -> None:
        await self.wire.aclose()


def build_huggingface(spec: ModelSpec, settings: Settings) -> RemoteModel:
    model = spec.model
    token = reveal(settings.hf_token)
    if not spec.base_url and not token:
        raise RuntimeError(f"model {spec.name!r}: the Hugging Face router needs HF_TOKEN.")
    common = {
        "huggingfacehub_api_token": token,
        "task": "text-generation",
        "max_new_tokens": settings.max_tokens_default,
        "temperature": settings.temperature_default,
        "timeout": int(wire_timeout(settings).read or 120),
        "streaming": True,
    }
    if spec.base_url:
        # HF_TOKEN goes only to Hugging Face's own hosts: a self-hosted TGI that wants a
        # key gets LLM_API_KEY instead.
        key = reveal(settings.llm_api_key)
        url, api_key = chat_completions_url(spec.base_url), key
        llm = HuggingFaceEndpoint(
            endpoint_url=spec.base_url,
            server_kwargs={"headers": {"Authorization": f"Bearer {key}"}} if key else {},
            **common,
        )
    else:
        if not (token or "").startswith("hf_"):
            raise RuntimeError("HF_TOKEN must be a Hugging Face token (it starts with hf_).")
        url, api_key = chat_completions_url(HF_ROUTER), token
        llm = HuggingFaceEndpoint(repo_id=model, **common)
    chat = ChatHuggingFace(llm=llm, stream_usage=True)
    if model:
        # The real model's name, never "dummy" or the URL: a router behind a URL then
        # serves the right one.
        chat.model_id = model
    return RemoteModel(
        name=spec.name,
        provider="huggingface",
        chat=chat,
        context_window=spec.context_window or DEFAULT_REMOTE_CONTEXT,
        wire=ChatWire(
            url=url,
            model=model or "tgi",  # TGI serves one model and accepts any name
            api_key=api_key,
            timeout=wire_timeout(settings),
            defaults=default_params(settings),
        ),
    )


class CompatibleChatOpenAI(ChatOpenAI):
    """langchain-openai renames max_tokens to OpenAI's newer max_completion_tokens;
    vLLM, Ollama, llama.cpp and TGI all know max_tokens, so it is sent as that."""

    def _get_request_payload(self, input_, *, stop=None, **kwargs):
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload


def build_openai_compatible(spec: ModelSpec, settings: Settings) -> RemoteModel:
    url = chat_completions_url(spec.base_url or "")
    key = reveal(settings.llm_api_key)
    chat = CompatibleChatOpenAI(
        model=spec.model or "",
        base_url=url.removesuffix("/chat/completions"),
        api_key=key or "not-needed",  # local servers accept any key
        timeout=wire_timeout(settings),
        max_retries=0,  # retries are ours: before the first token only
        streaming=True,
        stream_usage=True,
        max_tokens=settings.max_tokens_default,
        temperature=settings.temperature_default,
    )
    return RemoteModel(
        name=spec.name,
        provider="openai-compatible",
        chat=chat,
        context_window=spec.context_window or DEFAULT_REMOTE_CONTEXT,
        wire=ChatWire(
            url=url,
            model=spec.model or "",
            api_key=key,
            timeout=wire_timeout(settings),
            defaults=default_params(settings),
        ),
    )
