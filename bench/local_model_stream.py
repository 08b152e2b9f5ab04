"""Time to first token and tokens/s of the bundled SmolLM2: called directly, and through
`POST /chat/stream` on a real uvicorn server (same prompt, same settings).

    .venv/bin/python -m bench.local_model_stream [--runs 10] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from backend.api.app import create_app
from backend.llm.local import build_local_model
from backend.services.prompt import build_prompt
from tests.helpers import fake_embeddings, live_server, make_settings, register

QUESTION = "Explain in a few sentences why the sky is blue."


async def direct(handle, settings, max_tokens: int) -> tuple[float, int, float]:
    prompt = build_prompt(
        system=settings.system_prompt,
        history=[],
        question=QUESTION,
        count_tokens=handle.count_tokens,
        budget=handle.context_window - max_tokens,
    )
    started = time.perf_counter()
    first, tokens = None, 0
    async for chunk in handle.chat.astream(prompt.messages, max_tokens=max_tokens, temperature=0):
        if chunk.text:
            tokens += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    assert first is not None, "the model said nothing"
    return (first - started) * 1000, tokens, tokens / (end - first)


async def through_api(
    url: str, headers: dict[str, str], max_tokens: int
) -> tuple[float, int, float]:
    body = {
        "message": QUESTION,
        "max_tokens": max_tokens,
        "temperature": 0,
        "retrieval": {"enabled": False},
    }
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        first, tokens = None, 0
        async with aconnect_sse(http, "POST", "/chat/stream", json=body, headers=headers) as source:
            async for event in source.aiter_sse():
                if event.event == "token":
                    tokens += 1
                    first = first or time.perf_counter()
        end = time.perf_counter()
    assert first is not None, "the API streamed no token"
    return (first - started) * 1000, tokens, tokens / (end - first)


def summarise(name: str, rows: list[tuple[float, int, float]]) -> None:
    ttft = [r[0] for r in rows]
    rate = [r[2] for r in rows]
    per_answer = statistics.mean(r[1] for r in rows)
    print(
        f"{name:<22} ttft p50 {statistics.median(ttft):7.1f} ms  max {max(ttft):7.1f} ms   "
        f"tokens/s p50 {statistics.median(rate):6.1f}  ({per_answer:.0f} tokens/answer)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(Path(tmp), f"sqlite+aiosqlite:///{tmp}/bench.db")
        started = time.perf_counter()
        handle = build_local_model(settings)
        print(f"model loaded in {time.perf_counter() - started:.2f} s; {os.cpu_count()} cores")
        asyncio.run(direct(handle, settings, 8))  # warm-up
        direct_rows = [
            asyncio.run(direct(handle, settings, args.max_tokens)) for _ in range(args.runs)
        ]
        with live_server(create_app(settings, model=handle, embeddings=fake_embeddings())) as live:
            with httpx.Client(base_url=live.url) as http:
                headers = register(http)
            asyncio.run(through_api(live.url, headers, 8))  # warm-up
            api_rows = [
                asyncio.run(through_api(live.url, headers, args.max_tokens))
                for _ in range(args.runs)
            ]
        asyncio.run(handle.aclose())
    print(f"{args.runs} runs, max_tokens {args.max_tokens}, temperature 0, prompt: {QUESTION!r}")
    summarise("direct (LangChain)", direct_rows)
    summarise("POST /chat/stream", api_rows)


if __name__ == "__main__":
    main()
