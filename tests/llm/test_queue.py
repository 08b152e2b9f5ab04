"""The local model's waiting line: answers take turns, a waiting one is told its position
(`status` before `meta`), a full line refuses with 503 + Retry-After, and one that leaves
frees its place without being answered."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from backend.common.errors import ModelBusy
from backend.llm.queue import ModelQueue, QueuedModel
from tests.helpers import (
    LiveServer,
    RecordingFakeChatModel,
    Serve,
    fake_model,
    register,
    stream_chat,
    wait_until,
)


async def test_the_line_admits_in_order_tells_positions_and_lets_leavers_go() -> None:
    line = ModelQueue(max_waiting=2)
    told: dict[str, list[int]] = {"b": [], "c": []}
    order: list[str] = []
    release = asyncio.Event()

    async def answer(name: str) -> None:
        place = line.join()
        try:
            async for position in place.moves():
                told[name].append(position)
            order.append(name)
            if name == "a":
                await release.wait()
        finally:
            place.leave()

    a = asyncio.create_task(answer("a"))
    await asyncio.sleep(0)
    b = asyncio.create_task(answer("b"))
    c = asyncio.create_task(answer("c"))
    await asyncio.sleep(0)
    assert (told["b"], told["c"]) == ([1], [2])
    with pytest.raises(ModelBusy) as refused:  # two wait: the line is full
        line.check()
    assert refused.value.retry_after >= 1

    b.cancel()  # b leaves: c moves up, and a place is free again
    await asyncio.gather(b, return_exceptions=True)
    await asyncio.sleep(0)
    assert told["c"] == [2, 1]
    line.check()

    release.set()
    await asyncio.gather(a, c)
    assert order == ["a", "c"]  # b was never answered
    assert not line.busy
    assert not line.waiting


def queued_model(reply: str, *, sleep: float, max_waiting: int) -> QueuedModel:
    fake = fake_model([reply], sleep=sleep)
    return QueuedModel(
        name=fake.name,
        provider=fake.provider,
        chat=fake.chat,
        context_window=fake.context_window,
        queue=ModelQueue(max_waiting=max_waiting),
    )


def _stream_in_thread(
    client: httpx.Client, headers: dict[str, str], events: list[tuple[str, Any]]
) -> threading.Thread:
    def read() -> None:
        with connect_sse(
            client, "POST", "/chat/stream", json={"message": "Hi"}, headers=headers
        ) as source:
            for sse in source.iter_sse():
                events.append((sse.event, sse.json()))

    thread = threading.Thread(target=read)
    thread.start()
    return thread


@dataclass
class Held:
    """A server whose queued model is answering a first chat (`first`, read by `holder`)."""

    model: QueuedModel
    live: LiveServer
    headers: dict[str, str]
    first: list[tuple[str, Any]]
    holder: threading.Thread


def hold_the_model(serve: Serve, *, sleep: float, max_waiting: int) -> Held:
    model = queued_model("slow reply", sleep=sleep, max_waiting=max_waiting)
    live = serve(model=model)
    headers = register(live.http)
    first: list[tuple[str, Any]] = []
    holder = _stream_in_thread(live.http, headers, first)
    wait_until(lambda: any(name == "token" for name, _ in first), 30)  # the model is held
    return Held(model, live, headers, first, holder)


def test_a_second_answer_waits_with_its_position_then_is_answered(serve: Serve) -> None:
    held = hold_the_model(serve, sleep=0.05, max_waiting=4)
    live, headers, first = held.live, held.headers, held.first

    second = stream_chat(live.http, headers, message="Me too")
    held.holder.join()
    assert second.names()[0] == "status"
    assert second.first("status") == {"state": "queued", "position": 1}
    assert second.names().index("meta") > second.names().index("status")
    assert second.text() == "slow reply"
    assert second.names()[-1] == "done"
    assert [name for name, _ in first if name == "status"] == []  # the first did not wait


def test_a_full_line_is_refused_before_the_stream_opens(serve: Serve) -> None:
    held = hold_the_model(serve, sleep=0.1, max_waiting=1)
    live, headers = held.live, held.headers
    second: list[tuple[str, Any]] = []
    threads = [held.holder]
    threads.append(_stream_in_thread(live.http, headers, second))
    wait_until(lambda: any(name == "status" for name, _ in second), 30)

    refused = live.http.post("/chat/stream", json={"message": "And me"}, headers=headers)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert "busy" in refused.json()["detail"]
    for thread in threads:
        thread.join()
    assert second[-1][0] == "done"


def test_a_client_that_leaves_the_line_is_not_answered_and_frees_its_place(
    serve: Serve,
) -> None:
    held = hold_the_model(serve, sleep=0.1, max_waiting=1)
    model, live, headers, holder = held.model, held.live, held.headers, held.holder
    assert isinstance(model.chat, RecordingFakeChatModel)

    with connect_sse(
        live.http, "POST", "/chat/stream", json={"message": "I will leave"}, headers=headers
    ) as source:
        event = next(iter(source.iter_sse()))
        assert (event.event, event.json()["position"]) == ("status", 1)
    # It left: the line is empty again, so another may wait in its place.
    line = model.queue
    assert line is not None
    wait_until(lambda: not line.waiting, 30)
    third: list[tuple[str, Any]] = []
    waiting = _stream_in_thread(live.http, headers, third)
    holder.join()
    waiting.join()
    assert third[-1][0] == "done"
    questions = [prompt[-1].text for prompt in model.chat.prompts]
    assert "I will leave" not in questions


def test_the_app_is_told_its_place_in_line(serve: Serve) -> None:
    from frontend.app import queue_notice
    from frontend.client import BackendClient, StreamedAnswer

    held = hold_the_model(serve, sleep=0.05, max_waiting=4)
    live, headers, holder = held.live, held.headers, held.holder

    client = BackendClient(live.url, token=headers["Authorization"].removeprefix("Bearer "))
    moves: list[int | None] = []
    answer = StreamedAnswer(on_queued=moves.append)
    text = "".join(client.stream_chat("Me too", None, answer))
    holder.join()
    client.close()
    assert text == "slow reply"
    assert moves == [1, None]  # next in line, then its turn
    assert queue_notice(1) == "⏳ Waiting for the model: your answer is next."
    assert queue_notice(3) == "⏳ Waiting for the model: 2 answers before yours."
