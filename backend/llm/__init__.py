"""The chat-model component: the configured models, in fallback order (`LLM_MODELS`, or one
model from `LLM_PROVIDER` / `LLM_MODEL` / `LLM_BASE_URL`)."""

from __future__ import annotations

import logging
import os

from backend.common.settings import ModelSpec, Settings
from backend.llm.base import ChatModel, LangChainModel, approximate_token_count
from backend.llm.catalog import ModelCatalog, UnknownModel

__all__ = [
    "ChatModel",
    "LangChainModel",
    "ModelCatalog",
    "UnknownModel",
    "approximate_token_count",
    "build_models",
]

log = logging.getLogger(__name__)

# Set by `python -m backend` for its workers: the URL of the local-model process they share.
LOCAL_MODEL_URL = "RAGSTREAM_LOCAL_MODEL_URL"


def build_chat_model(spec: ModelSpec, settings: Settings) -> ChatModel:
    match spec.provider:
        case "local":
            if shared := os.environ.get(LOCAL_MODEL_URL):  # a worker: the model is shared
                from backend.llm.shared import build_shared_local_model

                return build_shared_local_model(settings, spec, shared)
            from backend.llm.local import build_local_model

            return build_local_model(settings, spec)
        case "huggingface":
            from backend.llm.remote import build_huggingface

            return build_huggingface(spec, settings)
        case _:
            from backend.llm.remote import build_openai_compatible

            return build_openai_compatible(spec, settings)


def build_models(settings: Settings) -> ModelCatalog:
    models = [build_chat_model(spec, settings) for spec in settings.model_specs]
    for model, spec in zip(models, settings.model_specs, strict=True):
        # A small local model reads a compact prompt; any other the full one.
        model.prompt = spec.prompt or ("compact" if spec.provider == "local" else "full")
        log.info(
            "model %s (%s), context %d tokens, %s prompt",
            model.name, model.provider, model.context_window, model.prompt,
        )  # fmt: skip
    return ModelCatalog(models, settings=settings)
