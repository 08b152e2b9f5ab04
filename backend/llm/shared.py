"""A worker's view of the local model that `python -m backend`'s workers share (served by
the one model process, llm/host.py): streamed over the wire like any remote model, its
tokens counted with the model's own vocabulary (a few MB), and its waiting line asked
before an answer starts (the host answers with its line's own check)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from backend.common.errors import ModelBusy
from backend.common.settings import ModelSpec, Settings
from backend.llm.local import local_model_path
from backend.llm.remote import CompatibleChatOpenAI, RemoteModel
from backend.llm.wire import ChatWire, default_params, wire_timeout


@dataclass
class SharedLocalModel(RemoteModel):
    host: str = field(kw_only=True)  # the model process's URL

    @property
    def queued(self) -> bool:
        return True

    async def admit(self) -> None:
        async with httpx.AsyncClient(base_url=self.host, timeout=5) as http:
            response = await http.get(f"/queue/{self.name}")
        if response.status_code == 503:
            busy = response.json()
            raise ModelBusy(busy["detail"], retry_after=int(busy["retry_after"]))
        response.raise_for_status()


def build_shared_local_model(settings: Settings, spec: ModelSpec, url: str) -> SharedLocalModel:
    from llama_cpp import Llama

    vocabulary = Llama(
        model_path=str(local_model_path(settings, spec)), vocab_only=True, verbose=False
    )

    def count_tokens(text: str) -> int:
        return len(vocabulary.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    timeout = wire_timeout(settings)
    return SharedLocalModel(
        name=spec.name,
        provider="local",
        chat=CompatibleChatOpenAI(
            model=spec.name, base_url=f"{url}/v1", api_key="not-needed", timeout=timeout
        ),
        context_window=spec.context_window or settings.llm_context_window,
        wire=ChatWire(
            url=f"{url}/v1/chat/completions",
            model=spec.name,
            api_key=None,
            timeout=timeout,
            defaults=default_params(settings),
        ),
        counter=count_tokens,
        host=url,
    )
