"""The relay alone: an answer's events from a producer task to readers that keep their
own pace."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from backend.services.relay import Relay
from backend.services.turns import ChatEvent, OnDisconnect

WORDS = [f"w{n} " for n in range(200)]


async def answer_events(pause: float = 0.0) -> AsyncIterator[ChatEvent]:
    yield ChatEvent("meta", {"model": "m"})
    yield ChatEvent("sources", {"sources": []})
    for word in WORDS:
        yield ChatEvent("token", {"text": word})
        await asyncio.sleep(pause)
    yield ChatEvent("done", {"finish_reason": "stop"})


async def test_a_reader_that_pauses_gets_what_queued_as_one_event() -> None:
    relay = Relay()
    answer = relay.start(answer_events(), message_id="m1", user_id="u", on_disconnect="stop")
    events = []
    async for event in answer.follow():
        events.append(event)
        if event.event == "token" and len(events) == 3:
            await asyncio.sleep(0.05)  # meanwhile the producer writes the rest
    tokens = [e for e in events if e.event == "token"]
    assert "".join(e.data["text"] for e in tokens) == "".join(WORDS)
    assert len(tokens) < 10  # not 200: what queued up came together
    assert [e.id for e in tokens] == [
        sum(len(e.data["text"]) for e in tokens[: i + 1]) for i in range(len(tokens))
    ]
    assert events[-1].event == "done"
    assert events[-1].id == len("".join(WORDS))


async def test_two_readers_at_their_own_pace_see_the_same_text() -> None:
    relay = Relay()
    answer = relay.start(
        answer_events(pause=0.001), message_id="m2", user_id="u", on_disconnect="stop"
    )

    async def read(delay: float) -> str:
        text = ""
        async for event in answer.follow():
            if event.event == "token":
                text += event.data["text"]
                await asyncio.sleep(delay)
        return text

    fast, slow = await asyncio.gather(read(0), read(0.01))
    assert fast == slow == "".join(WORDS)


async def test_the_last_reader_leaving_stops_only_a_stop_answer() -> None:
    relay = Relay()
    cases: list[tuple[OnDisconnect, str]] = [("stop", "error"), ("finish", "done")]
    for policy, ends in cases:
        answer = relay.start(
            answer_events(pause=0.001), message_id=policy, user_id="u", on_disconnect=policy
        )
        reader = answer.follow()
        async for event in reader:
            if event.event == "token":
                break
        await reader.aclose()  # the reader leaves
        assert answer.task is not None
        await asyncio.wait_for(asyncio.shield(answer.task), 5)
        assert answer.end is not None
        assert answer.end.event == ends
        if policy == "finish":
            assert answer.text == "".join(WORDS)
    # A resumed reader of the stopped one gets the rest that was said, then the error.
    resumed = [e async for e in relay.logs["stop"].follow(after=2)]
    assert resumed[0].event == "meta"
    assert resumed[-1].data["code"] == "interrupted"
    await relay.close()
