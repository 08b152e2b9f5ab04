"""Test-data helpers: fake models, a real uvicorn server in a thread, API shortcuts."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import uvicorn
from fastapi import FastAPI
from httpx_sse import connect_sse
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from pydantic import Field
from starlette.applications import Starlette

from backend.api.app import create_app
from backend.common.settings import Settings
from backend.llm import ChatModel, LangChainModel
from backend.retrieval.store import VectorStore

T = TypeVar("T")


class RecordingFakeChatModel(FakeListChatModel):
    """LangChain's fake list model (one chunk a character) that also records each prompt
    and whether a generation is under way or was cancelled."""

    prompts: list[list[BaseMessage]] = Field(default_factory=list)
    stops: list[list[str] | None] = Field(default_factory=list)  # each request's stop
    active: int = 0
    cancelled: int = 0

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self.prompts.append(list(messages))
        self.stops.append(stop)
        self.active += 1
        try:
            async for chunk in super()._astream(messages, stop, run_manager, **kwargs):
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise
        finally:
            self.active -= 1


def fake_model(
    responses: list[str] | None = None,
    *,
    sleep: float | None = None,
    error_on_chunk_number: int | None = None,
    context_window: int = 4096,
) -> LangChainModel:
    chat = RecordingFakeChatModel(
        responses=responses or ["Hello there, how can I help?"],
        sleep=sleep,
        error_on_chunk_number=error_on_chunk_number,
        prompts=[],
    )
    return LangChainModel(
        name="fake-model", provider="fake", chat=chat, context_window=context_window
    )


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: its own data folder and database, no `.env`."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "environment": "development",
        "sse_ping_seconds": 15,
        **overrides,
    }
    return Settings(_env_file=None, **values)


async def _admin(admin_url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_url, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def create_database(admin_url: str, name: str) -> None:
    """CREATE DATABASE `name` through a connection to `admin_url` (PostgreSQL)."""
    await _admin(admin_url, f'CREATE DATABASE "{name}"')


def with_database(url: str, name: str) -> str:
    """`url` (a `postgresql://` URL, TCP or unix socket) naming database `name` instead."""
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def drop_database(admin_url: str, name: str) -> None:
    await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fake_embeddings() -> Embeddings:
    """LangChain's deterministic fake: 384-d vectors from a hash of the text (meaningless
    as semantics, so tests that need meaning use the real model)."""
    return DeterministicFakeEmbedding(size=384)


def build_app(
    tmp_path: Path,
    database_url: str,
    *,
    model: ChatModel | None = None,
    embeddings: Embeddings | None = None,
    store: VectorStore | None = None,
    **settings: Any,
) -> FastAPI:
    """An app on its own data folder and database; fake embeddings, and a fake model unless
    the settings name real ones (LLM_MODELS / LLM_PROVIDER)."""
    if model is None and not {"llm_models", "llm_provider"} & settings.keys():
        model = fake_model()
    return create_app(
        make_settings(tmp_path, database_url, **settings),
        model=model,
        embeddings=embeddings or fake_embeddings(),
        store=store,
    )


class Serve(Protocol):
    """The `serve` fixture: start a backend server for this test."""

    def __call__(self, *, database_url: str | None = None, **options: Any) -> LiveServer: ...


@dataclass
class LiveServer:
    url: str
    app: Starlette
    http: httpx.Client  # a client of this server, closed with it

    @property
    def components(self) -> Any:
        return self.app.state.components


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_processes() -> dict[int, list[int]]:
    """Every process's children, by parent pid (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant (worker processes, a model host)."""
    children = child_processes()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


@contextmanager
def live_server(app: Starlette) -> Iterator[LiveServer]:
    """Serve `app` with a real uvicorn on 127.0.0.1 in a thread, until the block ends."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
            proxy_headers=False,  # as `python -m backend`: only TRUSTED_PROXIES are believed
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError("the test server did not start (see the log above)")
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            yield LiveServer(url=url, app=app, http=http)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def register(
    client: httpx.Client, username: str | None = None, password: str = "s3cret-pass"
) -> dict[str, str]:
    """Create a user and return Authorization headers for it."""
    username = username or f"user-{uuid.uuid4().hex[:10]}"
    response = client.post("/auth/register", json={"username": username, "password": password})
    assert response.status_code == 201, response.text
    token = client.post("/auth/token", data={"username": username, "password": password})
    assert token.status_code == 200, token.text
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def ingest(client: httpx.Client, headers: dict[str, str], *documents: dict[str, Any]) -> None:
    """Store documents for the user of `headers` through the API."""
    response = client.post("/documents", json={"documents": list(documents)}, headers=headers)
    assert response.status_code == 201, response.text


@dataclass
class StreamResult:
    events: list[tuple[str, dict[str, Any]]]

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def first(self, name: str) -> dict[str, Any]:
        return next(data for event, data in self.events if event == name)

    def text(self) -> str:
        return "".join(data["text"] for event, data in self.events if event == "token")


def stream_chat(client: httpx.Client, headers: dict[str, str], **body: Any) -> StreamResult:
    events = []
    with connect_sse(client, "POST", "/chat/stream", json=body, headers=headers) as source:
        source.response.raise_for_status()
        for sse in source.iter_sse():
            events.append((sse.event, sse.json()))
    return StreamResult(events)


def read_then_leave(
    client: httpx.Client, headers: dict[str, str], characters: int, **body: Any
) -> tuple[dict[str, Any], str, str]:
    """Start an answer (`POST /chat/stream` with `body`), read until `characters` have
    come, and leave: (meta, the text read, the last event id)."""
    received, last_id = "", ""
    with connect_sse(
        client, "POST", "/chat/stream", json={"message": "Hi", **body}, headers=headers
    ) as source:
        for sse in source.iter_sse():
            if sse.event == "meta":
                meta = sse.json()
            if sse.event == "token":
                received += sse.json()["text"]
                last_id = sse.id
                assert int(last_id) == len(received)  # the id counts characters so far
                if len(received) >= characters:
                    break
    return meta, received, last_id


def wait_until(check: Callable[[], T | None], seconds: float = 10, what: str = "timed out") -> T:
    """Ask `check` until it gives something true (returned); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.02)
    return found


def first_answer(
    client: httpx.Client, headers: dict[str, str], conversation_id: str
) -> dict[str, Any] | None:
    """The conversation's first answer once its row is written (at its first save)."""
    url = f"/conversations/{conversation_id}"
    messages = client.get(url, headers=headers).json()["messages"]
    return messages[1] if len(messages) > 1 else None
