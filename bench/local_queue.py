"""Simultaneous chats on the bundled local model: `python -m backend` (WORKERS as given,
the one shared model process) and N clients asking at the same moment. Printed for each:
its place in line (first `status`), how long it waited for its turn (`meta`), its first
token and its end; then the model alone answering the same prompt once, as the baseline.

    .venv/bin/python -m bench.local_queue [--chats 8] [--workers 2] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx

from bench.relay_load import process, register
from tests.helpers import free_port

QUESTION = "Explain in a few sentences why the sky is blue."


async def one_chat(
    http: httpx.AsyncClient, headers: dict[str, str], max_tokens: int, start: asyncio.Event
) -> dict[str, float | int | None]:
    body = {"message": QUESTION, "max_tokens": max_tokens, "temperature": 0,
            "retrieval": {"enabled": False}}  # fmt: skip
    await start.wait()
    began = time.perf_counter()
    seen: dict[str, float | int | None] = {"position": None, "turn": None, "first": None}
    event = ""
    async with http.stream("POST", "/chat/stream", json=body, headers=headers) as response:
        if response.status_code != 200:
            return {"refused": response.status_code}
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                now = (time.perf_counter() - began) * 1000
                if event == "status" and seen["position"] is None:
                    seen["position"] = json.loads(line[5:])["position"]
                elif event == "meta":
                    seen["turn"] = now
                elif event == "token" and seen["first"] is None:
                    seen["first"] = now
                elif event in ("done", "error"):
                    seen["end"] = now
                    seen["ok"] = event == "done"
    return seen


async def run(url: str, chats: int, max_tokens: int) -> list[dict[str, float | int | None]]:
    headers = register(url)
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await one_chat(http, headers, 8, _set())  # warm-up
        start = asyncio.Event()
        tasks = [asyncio.create_task(one_chat(http, headers, max_tokens, start)) for _ in range(chats)]  # fmt: skip
        await asyncio.sleep(0.2)
        start.set()
        return await asyncio.gather(*tasks)


def _set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--workers", default="2")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"PORT": str(port), "DATA_DIR": tmp, "LOG_LEVEL": "warning", "WORKERS": args.workers,
               "LLM_QUEUE_MAX": str(args.chats), "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
        with process([sys.executable, "-m", "backend"], f"http://127.0.0.1:{port}/ready", env):
            results = asyncio.run(run(f"http://127.0.0.1:{port}", args.chats, args.max_tokens))
    print(f"{args.chats} chats at once on the local model, {args.workers} worker(s), "
          f"{args.max_tokens} tokens each, {os.cpu_count()} cores")  # fmt: skip
    print("chat | first place in line | waited for its turn ms | first token ms | end ms | ok")
    for n, r in enumerate(sorted(results, key=lambda r: r.get("first") or 1e12), 1):
        if "refused" in r:
            print(f"{n:>4} | refused with {r['refused']}")
            continue
        print(f"{n:>4} | {r['position'] if r['position'] is not None else '-':>19} | "
              f"{r['turn'] or 0:>22.0f} | {r['first'] or 0:>14.0f} | {r.get('end') or 0:>6.0f} | {r.get('ok')}")  # fmt: skip
    baseline = subprocess.run(
        [sys.executable, "-m", "bench.local_model_stream", "--runs", "1", "--max-tokens", str(args.max_tokens)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    print("the model alone (bench.local_model_stream, one run):")
    print(baseline.stdout.strip())


if __name__ == "__main__":
    main()
