"""The one local-model process that `python -m backend`'s workers share.

llama.cpp answers one prompt at a time with every core; one process per worker would
load the model N times and make N answers fight for the same cores. So with WORKERS > 1,
`shared_local_model` starts this process (`python -m backend.llm.host PORT`) on
127.0.0.1, each worker streams from it in OpenAI's chat format (backend.llm.wire), and
the waiting line lives here, one for all workers: while an answer waits, its stream
carries `{"queue": {"position": n}}` chunks, then position 0 when its turn begins;
`GET /queue/{model}` says whether another may join (the workers ask before starting).
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
from backend.llm import LOCAL_MODEL_URL, ChatModelHandle
from backend.llm.wire import PARAMS, Delta

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


def host_app(settings: Settings) -> Starlette:
    from backend.llm.local import build_local_model

    handles: dict[str, ChatModelHandle] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for spec in settings.model_specs:
            if spec.provider == "local":
                handles[spec.name] = build_local_model(settings, spec)
        try:
            yield
        finally:
            for handle in handles.values():
                await handle.aclose()

    def handle_for(name: str) -> ChatModelHandle | None:
        return handles.get(name) or next(iter(handles.values()), None)

    async def queue(request: Request) -> Response:
        handle = handle_for(request.path_params["model"])
        if handle is None or handle.queue is None:
            return JSONResponse({"error": "no such model"}, status_code=404)
        line = handle.queue
        return JSONResponse(
            {
                "busy": line.busy,
                "waiting": len(line.waiting),
                "max_waiting": line.max_waiting,
                "retry_after": line.retry_after(),
            }
        )

    async def completions(request: Request) -> Response:
        body = await request.json()
        handle = handle_for(str(body.get("model") or ""))
        if handle is None or handle.queue is None:
            return JSONResponse({"error": "no local model"}, status_code=404)
        try:
            handle.queue.check()
        except ModelBusy as busy:
            return JSONResponse(
                {"error": busy.detail, "error_type": "overloaded"},
                status_code=503,
                headers={"Retry-After": str(busy.retry_after)},
            )
        params = {name: body[name] for name in PARAMS if body.get(name) is not None}
        frames: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def generate() -> None:
            def queued(position: int) -> None:
                frames.put_nowait(_frame({"queue": {"position": position}}))

            try:
                async for delta in handle.stream(_messages(body), params, queued):
                    if delta.admitted:
                        frames.put_nowait(_frame({"queue": {"position": 0}}))
                    else:
                        frames.put_nowait(_frame(_chunk(delta, handle.name)))
                frames.put_nowait(b"data: [DONE]\n\n")
            except Exception as exc:
                log.exception("local model failed")
                frames.put_nowait(_frame({"error": str(exc)[:200], "error_type": "generation"}))
            finally:
                frames.put_nowait(None)

        async def body_frames() -> AsyncIterator[bytes]:
            task = asyncio.create_task(generate())
            try:
                while (frame := await frames.get()) is not None:
                    yield frame
            finally:  # the worker went away: leave the line, stop generating
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        return StreamingResponse(body_frames(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return JSONResponse({"models": list(handles)})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/queue/{model:path}", queue),
            Route("/health", health),
        ],
        lifespan=lifespan,
    )


async def check_queue(url: str, model: str) -> None:
    """Raise ModelBusy when the shared model's line is full (asked by a worker)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        state = (await http.get(f"/queue/{model}")).json()
    if state["busy"] and state["waiting"] >= state["max_waiting"]:
        raise ModelBusy(
            f"model {model} is busy: {state['waiting']} answers are waiting already; "
            "try again later",
            retry_after=int(state["retry_after"]),
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
