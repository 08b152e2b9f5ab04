"""The relay alone: an answer written by a producer task, followed by readers that keep
their own pace."""

from __future__ import annotations

import asyncio

from backend.services.answer import Answer
from backend.services.events import AnswerEvent
from backend.services.relay import Relay
from backend.services.turns import OnDisconnect

WORDS = [f"w{n} " for n in range(200)]


def new_answer(message_id: str) -> Answer:
    return Answer(message_id, "u", None, None, model="m", instance="here")


async def write(answer: Answer, pause: float = 0.0) -> None:
    """What the pipeline does to an answer: begin, the words, the end."""
    answer.begin("m", [])
    for word in WORDS:
        answer.add(word)
        await asyncio.sleep(pause)
    answer.conclude(prompt_tokens=1, completion_tokens=len(WORDS))
    answer.close()


async def test_a_reader_that_pauses_gets_what_queued_as_one_event() -> None:
    relay = Relay()
    answer = new_answer("m1")
    relay.start(answer, write(answer), on_disconnect="stop")
    events: list[AnswerEvent] = []
    async for event in relay.follow(answer):
        events.append(event)
        if event.name == "token" and len(events) == 3:
            await asyncio.sleep(0.05)  # meanwhile the producer writes the rest
    tokens = [e for e in events if e.name == "token"]
    assert "".join(e.text for e in tokens) == "".join(WORDS)
    assert len(tokens) < 10  # not 200: what queued up came together
    assert [e.id for e in tokens] == [
        sum(len(e.text) for e in tokens[: i + 1]) for i in range(len(tokens))
    ]
    assert events[-1].name == "done"
    assert events[-1].id == len("".join(WORDS))


async def test_two_readers_at_their_own_pace_see_the_same_text() -> None:
    relay = Relay()
    answer = new_answer("m2")
    relay.start(answer, write(answer, pause=0.001), on_disconnect="stop")

    async def read(delay: float) -> str:
        text = ""
        async for event in relay.follow(answer):
            if event.name == "token":
                text += event.text
                await asyncio.sleep(delay)
        return text

    fast, slow = await asyncio.gather(read(0), read(0.01))
    assert fast == slow == "".join(WORDS)


async def test_the_last_reader_leaving_stops_only_a_stop_answer() -> None:
    relay = Relay()
    cases: list[tuple[OnDisconnect, str]] = [("stop", "error"), ("finish", "done")]
    for policy, ends in cases:
        answer = new_answer(policy)
        relay.start(answer, write(answer, pause=0.001), on_disconnect=policy)
        reader = relay.follow(answer)
        async for event in reader:
            if event.name == "token":
                break
        await reader.aclose()  # the reader leaves
        await asyncio.wait_for(_ended(answer), 5)
        assert answer.last_event().name == ends
        if policy == "finish":
            assert answer.text == "".join(WORDS)
    # A resumed reader of the stopped one gets the rest that was said, then the error.
    stopped = relay.find("stop", "u")
    assert stopped is not None
    resumed = [e async for e in relay.follow(stopped, after=2)]
    assert resumed[0].name == "meta"
    last = resumed[-1]
    assert last.name == "error"
    assert last.code == "interrupted"
    await relay.close()


async def test_a_reader_that_comes_back_does_not_hear_stale_queue_positions() -> None:
    """`status` (the place in a busy model's line) is news only while the answer waits:
    a reader that resumes after the answer began gets its head, never old positions."""
    relay = Relay()
    answer = new_answer("queued")
    admitted = asyncio.Event()

    async def wait_then_write() -> None:
        answer.wait_in_line(2)
        await asyncio.sleep(0.01)
        answer.wait_in_line(1)
        await admitted.wait()
        await write(answer)

    relay.start(answer, wait_then_write(), on_disconnect="finish")
    live = relay.follow(answer)
    assert (await anext(live)).data() == {"state": "queued", "position": 2}
    assert (await anext(live)).data() == {"state": "queued", "position": 1}
    admitted.set()
    rest = [e.name async for e in live]
    assert rest[:2] == ["meta", "sources"]
    resumed = [e.name async for e in relay.follow(answer, after=1)]
    assert "status" not in resumed
    assert resumed[:2] == ["meta", "sources"]
    await relay.close()


async def _ended(answer: Answer) -> None:
    wake = answer.watch()
    try:
        while not answer.ended:
            wake.clear()
            await wake.wait()
    finally:
        answer.unwatch(wake)
