"""The chat-model component: one provider, chosen by settings (`LLM_PROVIDER`)."""

from __future__ import annotations

from backend.llm.base import ChatModelHandle, approximate_token_count
from backend.settings import Settings

__all__ = ["ChatModelHandle", "approximate_token_count", "build_chat_model"]


class ModelConfigurationError(RuntimeError):
    """The settings name a model that cannot be used; the message says what to change."""


def build_chat_model(settings: Settings) -> ChatModelHandle:
    provider = settings.resolved_llm_provider
    match provider:
        case "local":
            from backend.llm.local import build_local_model

            return build_local_model(settings)
        case _:
            raise ModelConfigurationError(
                f"LLM_PROVIDER={provider!r} is not available in this version; "
                "set LLM_PROVIDER=local (the bundled SmolLM2) or unset HF_TOKEN."
            )
