"""A chat model on a user's own key (services/model_keys.py keeps the keys): a Hugging Face
token (the router by model id, or an endpoint URL) or an OpenAI-compatible key with its base
URL. Its requests go through `GuardedTransport` (no loopback, private or metadata
addresses), carry only that user's key, and its failures name the key, never fall back to
the operator's models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from langchain_core.messages import BaseMessage
from langchain_openai import ChatOpenAI

from backend.common.settings import Settings
from backend.llm.base import Delta, StreamItem
from backend.llm.errors import ModelFailure, classify
from backend.llm.remote import (
    DEFAULT_REMOTE_CONTEXT,
    HF_ROUTER,
    CompatibleChatOpenAI,
    RemoteModel,
    chat_completions_url,
)
from backend.llm.wire import ChatWire, default_params, wire_timeout

DEFAULT_HF_MODEL = "meta-llama/Meta-Llama-3-8B-Instruct"
OWN_PREFIX = "my-key:"  # a user's own model's id: never one of the operator's

# What the user reads when their key fails, by failure kind ({key}: the masked key).
OWN_KEY_MESSAGES = {
    "auth": "Your model key ({key}) was refused by its provider (401/403); check or replace "
    "it in your settings.",
    "payment": "Your model key ({key}) has no credits left for this model (402).",
    "rate_limited": "Your model key ({key}) is rate limited or out of quota{wait}.",
    "not_found": "The provider of your model key ({key}) does not know the model {model!r}.",
    "redirected": "The server of your model key ({key}) answered with a redirect, which is "
    "not followed; use its final URL.",
}


def own_model_name(provider: str, model: str | None) -> str:
    """The model a key asks for: the one saved with it, else Hugging Face's default."""
    return model or (DEFAULT_HF_MODEL if provider == "huggingface" else "")


def own_model_id(provider: str, model: str | None, base_url: str | None) -> str:
    """Its id in GET /models and /chat's `model`: never one of the operator's."""
    return OWN_PREFIX + (own_model_name(provider, model) or base_url or provider)


@dataclass(frozen=True)
class OwnKey:
    """A user's key, decrypted for the moment a model is built from it."""

    provider: str  # huggingface | openai-compatible
    api_key: str
    hint: str  # masked, for messages
    base_url: str | None = None
    model: str | None = None

    @property
    def model_name(self) -> str:
        return own_model_name(self.provider, self.model)

    @property
    def model_id(self) -> str:
        return own_model_id(self.provider, self.model, self.base_url)

    @property
    def url(self) -> str:
        """Where the chat completions go."""
        if self.base_url:
            return chat_completions_url(self.base_url)
        return chat_completions_url(HF_ROUTER)


@dataclass
class OwnKeyModel(RemoteModel):
    """A RemoteModel on a user's key; failures say so, and name the key (masked)."""

    hint: str = field(kw_only=True, default="")
    own_key: bool = field(kw_only=True, default=True)

    async def stream(
        self, messages: list[BaseMessage], params: Mapping[str, Any]
    ) -> AsyncIterator[StreamItem]:
        started = False
        try:
            async for item in self.wire.stream(messages, params):
                started = started or (isinstance(item, Delta) and bool(item.text))
                yield item
        except Exception as exc:  # noqa: BLE001 - every failure is the key owner's to read
            raise self.own_failure(classify(exc, started=started)) from None

    def own_failure(self, failure: ModelFailure) -> ModelFailure:
        """The failure as the key's owner should read it; never a fallback to others."""
        failure.fallback = False
        template = OWN_KEY_MESSAGES.get(failure.kind)
        if template is not None and failure.message is None:
            wait = f"; try again in {round(failure.retry_after)} s" if failure.retry_after else ""
            failure.message = template.format(key=self.hint, wait=wait, model=self.wire.model)
        elif failure.message is None:
            failure.message = f"{failure.user_message()} (on your model key {self.hint})"
        return failure


def build_own_model(
    key: OwnKey,
    settings: Settings,
    transport: httpx.AsyncBaseTransport,
) -> OwnKeyModel:
    """The model a user's key serves; `transport` is a GuardedTransport."""
    timeout = wire_timeout(settings)
    url = key.url
    chat: ChatOpenAI = CompatibleChatOpenAI(
        model=key.model_name,
        base_url=url.removesuffix("/chat/completions"),
        api_key=key.api_key,
        timeout=timeout,
        max_retries=0,
        streaming=True,
        stream_usage=True,
        max_tokens=settings.max_tokens_default,
        temperature=settings.temperature_default,
        http_async_client=httpx.AsyncClient(transport=transport, timeout=timeout),
    )
    return OwnKeyModel(
        name=key.model_id,
        provider=key.provider,
        chat=chat,
        context_window=DEFAULT_REMOTE_CONTEXT,
        wire=ChatWire(
            url=url,
            model=key.model_name or "tgi",
            api_key=key.api_key,
            timeout=timeout,
            defaults=default_params(settings),
            transport=transport,
        ),
        hint=key.hint,
    )
