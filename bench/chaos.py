"""Chaos: many chats while everything goes wrong, then an audit of what was stored.

`--clients` clients hold `--chats` chats over `--seconds` against `python -m backend` (its
own process, SQLite or --database-url) and a loopback upstream that answers at random:
normally, 429, 503, a stall past the token timeout, a cut mid-stream, an error payload.
Clients disconnect at random (half of them asked `finish`, half `stop`), and the backend
is SIGKILLed and restarted `--kills` times. Then every conversation is read back.

Printed: chats run, how each ended for its reader; answers lost (a reader saw text that
no stored row holds, beyond the last second before a kill: target 0); rows left
non-terminal (`streaming`: target 0); 5xx responses (target 0).

    .venv/bin/python -m bench.chaos [--chats 1000 --seconds 300 --clients 20 --kills 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def chaos_upstream(port: int, seed: int) -> None:
    """The upstream, in a child process: each request draws what happens to it."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import Response

    from tests.upstream import Scenario, Upstream

    chance = random.Random(seed)
    tokens = [f" w{i}" for i in range(60)]

    class Chaotic(Upstream):
        async def chat(self, request: Request) -> Response:
            draw = chance.random()
            if draw < 0.08:
                self.script(
                    Scenario(status=429, error="rate limited", headers={"Retry-After": "0"})
                )
            elif draw < 0.14:
                self.script(Scenario(status=503, error="overloaded"))
            elif draw < 0.19:
                self.script(
                    Scenario(tokens=tokens, delay_between=0.02, stall_after=20, stall_seconds=4)
                )
            elif draw < 0.24:
                self.script(
                    Scenario(tokens=tokens, delay_between=0.02, cut_after=chance.randint(1, 50))
                )
            elif draw < 0.28:
                self.script(
                    Scenario(tokens=tokens, delay_between=0.02, error_after=chance.randint(1, 50))
                )
            else:
                self.script(Scenario(tokens=tokens, delay_between=0.02))
            return await super().chat(request)

    uvicorn.run(Chaotic("openai").app, host="127.0.0.1", port=port, log_level="warning")


@dataclass
class Chat:
    meta: dict | None = None
    seen: list[tuple[float, int]] = field(default_factory=list)  # (when, characters so far)
    text: str = ""
    ended: str = "?"  # done, error, left, cut (the backend went away), refused, 5xx


class Backend:
    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.port, self.env = port, env
        self.process: subprocess.Popen[bytes] | None = None
        self.kills: list[float] = []

    def start(self) -> None:
        log = open(Path(self.env["DATA_DIR"]) / "backend.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "backend"], cwd=ROOT, env={**os.environ, **self.env},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the backend did not start")

    def kill(self) -> None:
        assert self.process is not None
        self.kills.append(time.monotonic())
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


async def one_chat(
    http: httpx.AsyncClient, headers: dict[str, str], chance: random.Random, fives: Counter
) -> Chat:
    chat = Chat()
    leave_after = chance.randint(1, 40) if chance.random() < 0.25 else None
    body = {"message": "Tell me", "on_disconnect": chance.choice(["stop", "finish"])}
    try:
        async with http.stream("POST", "/chat/stream", json=body, headers=headers) as response:
            if response.status_code >= 500:
                fives[f"POST /chat/stream {response.status_code}"] += 1
                chat.ended = "5xx"
                return chat
            if response.status_code != 200:
                chat.ended = f"refused {response.status_code}"
                return chat
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == "meta":
                        chat.meta = data
                    elif event == "token":
                        chat.text += data["text"]
                        chat.seen.append((time.monotonic(), len(chat.text)))
                        if leave_after is not None and len(chat.seen) >= leave_after:
                            chat.ended = "left"
                            return chat
                    elif event in ("done", "error"):
                        chat.ended = event
                        return chat
            chat.ended = "cut"
    except httpx.HTTPError:
        chat.ended = "cut" if chat.meta else "refused (down)"
    return chat


async def client(
    url: str, n: int, chats: int, deadline: float, results: list[Chat], fives: Counter
) -> None:
    chance = random.Random(n)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        name = f"chaos-{n}-{random.randrange(10**9)}"
        await http.post("/auth/register", json={"username": name, "password": "chaos-password"})
        token = (
            await http.post("/auth/token", data={"username": name, "password": "chaos-password"})
        ).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        for i in range(chats):
            # Spread the chats over the run.
            await asyncio.sleep(
                max(0.0, (deadline - time.monotonic()) / max(chats - i, 1) * chance.random())
            )
            results.append(await one_chat(http, headers, chance, fives))


async def killer(backend: Backend, at: list[float]) -> None:
    for when in at:
        await asyncio.sleep(max(0.0, when - time.monotonic()))
        backend.kill()
        await asyncio.to_thread(backend.start)


def audit(chats: list[Chat], kills: list[float], database: Path, url: str) -> None:
    stored: dict[str, tuple[str, str]] = {}
    with sqlite3.connect(database) as db:
        for message_id, content, status in db.execute(
            "SELECT id, content, status FROM messages WHERE role = 'assistant'"
        ):
            stored[message_id] = (content, status)
        left = db.execute("SELECT count(*) FROM messages WHERE status = 'streaming'").fetchone()[0]
    lost, lost_chars = 0, 0
    for chat in chats:
        if not chat.meta or not chat.seen:
            continue
        # What must be stored: all the reader saw, but the last second before a kill.
        first, last = chat.seen[0][0], chat.seen[-1][0]
        cut = next((k for k in kills if first <= k and k - 1.0 <= last + 1.0), None)
        must = (
            chat.seen[-1][1]
            if cut is None
            else max([n for t, n in chat.seen if t <= cut - 1.0] or [0])
        )
        content, _ = stored.get(chat.meta["assistant_message_id"], ("", ""))
        have = next(
            (i for i, (a, b) in enumerate(zip(content, chat.text, strict=False)) if a != b),
            min(len(content), len(chat.text)),
        )
        if have < must:
            lost += 1
            lost_chars += must - have
    statuses = Counter(status for _, status in stored.values())
    print(f"chats: {len(chats)}; for their readers: {dict(Counter(c.ended for c in chats))}")
    print(f"stored answers: {len(stored)}, by status: {dict(statuses)}")
    print(
        f"answers lost (reader saw text no row holds, beyond the last second before a kill): {lost} ({lost_chars} characters)"
    )
    print(f"rows left non-terminal (streaming): {left}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chats", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        chaos_upstream(args.serve_upstream, seed=7)
        return

    upstream_port, port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.chaos", "--serve-upstream", str(upstream_port)], cwd=ROOT
    )
    with tempfile.TemporaryDirectory(prefix="ragstream-chaos-") as tmp:
        env = {
            "PORT": str(port), "DATA_DIR": tmp, "LOG_LEVEL": "warning", "SECRET_KEY": "c" * 48,
            "HF_HUB_DISABLE_TELEMETRY": "1", "LLM_PROVIDER": "openai-compatible", "LLM_MODEL": "m",
            "LLM_BASE_URL": f"http://127.0.0.1:{upstream_port}", "LLM_MAX_RETRIES": "2",
            "LLM_RETRY_BASE_SECONDS": "0.1", "LLM_TOKEN_TIMEOUT": "2", "LLM_FIRST_TOKEN_TIMEOUT": "5",
            "STREAM_STALE_SECONDS": "3", "LIMIT_REQUESTS": "100000/minute", "LIMIT_STREAMS": "100",
            "LIMIT_REGISTRATIONS": "1000/hour", "LIMIT_TOKENS_PER_DAY": "100000000",
        }  # fmt: skip
        backend = Backend(port, env)
        try:
            backend.start()
            url = f"http://127.0.0.1:{port}"
            started = time.monotonic()
            deadline = started + args.seconds
            kill_at = [
                started + args.seconds * (k + 1) / (args.kills + 1) for k in range(args.kills)
            ]
            results: list[Chat] = []
            fives: Counter[str] = Counter()
            per_client = args.chats // args.clients

            async def run() -> None:
                await asyncio.gather(
                    killer(backend, kill_at),
                    *(
                        client(url, n, per_client, deadline, results, fives)
                        for n in range(args.clients)
                    ),
                )

            asyncio.run(run())
            elapsed = time.monotonic() - started
            time.sleep(float(env["STREAM_STALE_SECONDS"]) * 2 + 1)  # finish-answers end, sweeps run
            print(
                f"{len(results)} chats from {args.clients} clients in {elapsed:.0f} s; backend SIGKILLed {len(backend.kills)} times"
            )
            audit(results, backend.kills, Path(tmp) / "ragstream.db", url)
            print(f"5xx responses: {sum(fives.values())} {dict(fives) if fives else ''}")
        finally:
            backend.stop()
            upstream.terminate()
            upstream.wait()


if __name__ == "__main__":
    main()
