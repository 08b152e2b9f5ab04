"""The configured chat models and which one answers: the one the request names, else the one
a routing rule picks, else the first configured; the others follow in order as fallbacks."""

from __future__ import annotations

from collections.abc import Sequence

from backend.common.settings import Settings
from backend.llm.base import ChatModel


class UnknownModel(LookupError):
    """A request named a model that is not configured."""

    def __init__(self, requested: str, choices: Sequence[str]) -> None:
        super().__init__(f"unknown model {requested!r}; choose one of: {', '.join(choices)}")


class ModelCatalog:
    def __init__(self, models: Sequence[ChatModel], *, settings: Settings) -> None:
        if not models:
            raise ValueError("at least one model is needed")
        self.models = list(models)
        self.by_id = {m.name: m for m in self.models}
        self.short_model = settings.llm_route_short_model
        self.short_max_chars = settings.llm_route_short_max_chars

    @property
    def default(self) -> ChatModel:
        return self.models[0]

    def ids(self) -> list[str]:
        return [m.name for m in self.models]

    def check(self, requested: str | None) -> None:
        if requested is not None and requested not in self.by_id:
            raise UnknownModel(requested, self.ids())

    def choose(self, requested: str | None, question: str) -> list[ChatModel]:
        """The model that should answer first, then the rest in fallback order."""
        self.check(requested)
        if requested is not None:
            first = self.by_id[requested]
        elif self.short_model and len(question) <= self.short_max_chars:
            first = self.by_id[self.short_model]
        else:
            first = self.default
        return [first, *(m for m in self.models if m is not first)]

    def is_ready(self) -> bool:
        return all(m.is_ready() for m in self.models)

    async def aclose(self) -> None:
        for model in self.models:
            await model.aclose()
