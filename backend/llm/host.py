"""The one local-model process that `python -m backend`'s workers share.

llama.cpp answers one prompt at a time with every core; one process per worker would
load the model N times and make N answers fight for the same cores. So with WORKERS > 1,
`shared_local_model` starts this process (`python -m backend.llm.host PORT`) on
127.0.0.1, each worker streams from it in OpenAI's chat format (backend.llm.wire), and
the waiting line lives here, one for all workers: while an answer waits, its stream
carries `{"queue": {"position": n}}` chunks, then position 0 when its turn begins;
`GET /queue/{model}` answers 503 when the line is full (the workers ask before starting).
A client that leaves (the worker closes the stream) leaves the line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backend.common.errors import ModelBusy
from backend.common.settings import Settings
from backend.llm import LOCAL_MODEL_URL
from backend.llm.base import Delta, Queued, StreamItem
from backend.llm.local import LocalModel, build_local_model
from backend.llm.wire import PARAMS

log = logging.getLogger(__name__)

PARENT_PID = "RAGSTREAM_SUPERVISOR_PID"
MESSAGE_TYPES = {"system": SystemMessage, "assistant": AIMessage}


def _messages(body: dict[str, Any]) -> list[BaseMessage]:
    return [
        MESSAGE_TYPES.get(m.get("role"), HumanMessage)(content=str(m.get("content") or ""))
        for m in body.get("messages") or []
    ]


def _frame(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def _chunk(delta: Delta, model: str) -> dict[str, Any]:
    choice = {"index": 0, "delta": {"content": delta.text}, "finish_reason": delta.finish_reason}
    chunk: dict[str, Any] = {"object": "chat.completion.chunk", "model": model, "choices": [choice]}
    if delta.usage is not None:
        chunk["usage"] = delta.usage
    return chunk


class _ModelHost:
    """The local models of the settings, served to the workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[str, LocalModel] = {}

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        for spec in self.settings.model_specs:
            if spec.provider == "local":
                self.models[spec.name] = build_local_model(self.settings, spec)
        try:
            yield
        finally:
            for model in self.models.values():
                await model.aclose()

    def model(self, name: str) -> LocalModel | None:
        return self.models.get(name) or next(iter(self.models.values()), None)

    async def _admitted(self, name: str) -> LocalModel | Response:
        """The model another answer may join now, or the answer that says why not (503 with
        Retry-After when its line is full)."""
        model = self.model(name)
        if model is None:
            return JSONResponse({"error": "no local model"}, status_code=404)
        try:
            await model.admit()
        except ModelBusy as busy:
            return JSONResponse(
                {
                    "detail": busy.detail,
                    "retry_after": busy.retry_after,
                    "error_type": "overloaded",
                },
                status_code=503,
                headers={"Retry-After": str(busy.retry_after)},
            )
        return model

    async def queue(self, request: Request) -> Response:
        """200 while another answer may join the line, else 503 (the workers ask first)."""
        model = await self._admitted(request.path_params["model"])
        if isinstance(model, Response):
            return model
        return JSONResponse({"waiting": len(model.queue.waiting)})

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        model = await self._admitted(str(body.get("model") or ""))
        if isinstance(model, Response):
            return model
        params = {name: body[name] for name in PARAMS if body.get(name) is not None}
        frames = _frames(model.stream(_messages(body), params), model.name)
        return StreamingResponse(frames, media_type="text/event-stream")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"models": list(self.models)})


async def _frames(items: AsyncIterator[StreamItem], model: str) -> AsyncIterator[bytes]:
    """A model's stream as OpenAI's chunks, its place in line as `queue` chunks. Generated
    in a task of its own, so that a worker going away (the body's generator closed) stops
    it at once, waiting or answering."""
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def generate() -> None:
        try:
            async for item in items:
                if isinstance(item, Queued):
                    frames.put_nowait(_frame({"queue": {"position": item.position}}))
                else:
                    frames.put_nowait(_frame(_chunk(item, model)))
            frames.put_nowait(b"data: [DONE]\n\n")
        except Exception as exc:
            log.exception("local model failed")
            frames.put_nowait(_frame({"error": str(exc)[:200], "error_type": "generation"}))
        finally:
            frames.put_nowait(None)

    task = asyncio.create_task(generate())
    try:
        while (frame := await frames.get()) is not None:
            yield frame
    finally:  # the worker went away: leave the line, stop generating
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def host_app(settings: Settings) -> Starlette:
    host = _ModelHost(settings)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", host.completions, methods=["POST"]),
            Route("/queue/{model:path}", host.queue),
            Route("/health", host.health),
        ],
        lifespan=host.lifespan,
    )


@contextlib.contextmanager
def shared_local_model(settings: Settings) -> Iterator[None]:
    """Run the local-model process for the workers (when a configured model is local)."""
    os.environ[PARENT_PID] = str(os.getpid())  # for die_with_parent, here and in workers
    if not any(spec.provider == "local" for spec in settings.model_specs):
        yield
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "backend.llm.host", str(port)])
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the local-model process exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the local-model process did not start in 10 minutes")
            time.sleep(0.2)
        log.info("local model shared by the workers at %s (pid %d)", url, process.pid)
        os.environ[LOCAL_MODEL_URL] = url
        yield
    finally:
        os.environ.pop(LOCAL_MODEL_URL, None)
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    import uvicorn

    from backend.common.logs import configure as configure_logging
    from backend.common.settings import settings_or_exit

    settings = settings_or_exit()
    configure_logging(
        level=settings.log_level, fmt=settings.log_format, instance=settings.instance_name
    )
    die_with_parent()
    uvicorn.run(
        host_app(settings),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        log_config=None,
    )


def die_with_parent() -> None:
    """Linux: this process is killed when the one that started it dies (even by SIGKILL),
    so a crashed `python -m backend` leaves no worker or model process behind."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        import signal

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        expected = os.environ.get(PARENT_PID)
        if expected and os.getppid() != int(expected):  # the parent died before the call
            os._exit(1)


if __name__ == "__main__":
    main()
