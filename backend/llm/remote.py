"""Remote chat models: Hugging Face (serverless router by repo id, or a dedicated endpoint /
TGI server by URL) and any OpenAI-compatible server (vLLM, Ollama, llama.cpp, TGI)."""

from __future__ import annotations

import logging

import httpx
from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint
from langchain_openai import ChatOpenAI

from backend.llm.base import ChatModelHandle
from backend.settings import ModelSpec, Settings, reveal

log = logging.getLogger(__name__)

DEFAULT_REMOTE_CONTEXT = 8192  # Llama-3-8B-Instruct


def _timeout(settings: Settings) -> httpx.Timeout:
    # Reads are bounded by the stream's own first-token / between-token timeouts.
    read = max(settings.llm_first_token_timeout, settings.llm_token_timeout) + 5
    return httpx.Timeout(read, connect=settings.llm_connect_timeout)


def build_huggingface(spec: ModelSpec, settings: Settings) -> ChatModelHandle:
    model = spec.model
    if not spec.base_url and not settings.hf_token:
        raise RuntimeError(f"model {spec.name!r}: the Hugging Face router needs HF_TOKEN.")
    common = {
        "huggingfacehub_api_token": reveal(settings.hf_token),
        "task": "text-generation",
        "max_new_tokens": settings.max_tokens_default,
        "temperature": settings.temperature_default,
        "timeout": int(_timeout(settings).read or 120),
        "streaming": True,
    }
    if spec.base_url:
        # langchain-huggingface sends HF_TOKEN only to Hugging Face hosts (dedicated
        # endpoints); a self-hosted TGI that wants a key gets LLM_API_KEY instead.
        key = reveal(settings.llm_api_key)
        llm = HuggingFaceEndpoint(
            endpoint_url=spec.base_url,
            server_kwargs={"headers": {"Authorization": f"Bearer {key}"}} if key else {},
            **common,
        )
    else:
        if not (reveal(settings.hf_token) or "").startswith("hf_"):
            raise RuntimeError("HF_TOKEN must be a Hugging Face token (it starts with hf_).")
        llm = HuggingFaceEndpoint(repo_id=model, **common)
    chat = ChatHuggingFace(llm=llm, stream_usage=True)
    if model:
        # With an endpoint URL the client would send model "dummy" (or the URL): name the
        # real model so a router behind the URL serves the right one.
        chat.model_id = model
    return ChatModelHandle(
        name=spec.name,
        provider="huggingface",
        chat=chat,
        context_window=spec.context_window or DEFAULT_REMOTE_CONTEXT,
    )


class CompatibleChatOpenAI(ChatOpenAI):
    """langchain-openai renames max_tokens to OpenAI's newer max_completion_tokens;
    vLLM, Ollama, llama.cpp and TGI all know max_tokens, so it is sent as that."""

    def _get_request_payload(self, input_, *, stop=None, **kwargs):
        payload = super()._get_request_payload(input_, stop=stop, **kwargs)
        if "max_completion_tokens" in payload:
            payload["max_tokens"] = payload.pop("max_completion_tokens")
        return payload


def build_openai_compatible(spec: ModelSpec, settings: Settings) -> ChatModelHandle:
    base_url = (spec.base_url or "").rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"

    chat = CompatibleChatOpenAI(
        model=spec.model or "",
        base_url=base_url,
        api_key=reveal(settings.llm_api_key) or "not-needed",  # local servers accept any key
        timeout=_timeout(settings),
        max_retries=0,  # retries are ours: before the first token only
        streaming=True,
        stream_usage=True,
        max_tokens=settings.max_tokens_default,
        temperature=settings.temperature_default,
    )
    return ChatModelHandle(
        name=spec.name,
        provider="openai-compatible",
        chat=chat,
        context_window=spec.context_window or DEFAULT_REMOTE_CONTEXT,
    )
