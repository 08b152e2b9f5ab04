"""What the backend adds in front of a remote model: time before the first token (request
in to first `token` event, minus the upstream's own time to first token) at 1 and 50
concurrent streams, and relayed tokens/s against the upstream's own rate.

The upstream is a loopback OpenAI-compatible server (tests/upstream.py) that answers at
once and then emits tokens at a fixed pace; the backend runs as its own process
(`python -m backend`), as in production.

    .venv/bin/python -m bench.remote_overhead [--concurrency 1,50] [--tokens 200] [--own-key]

`--own-key` measures, in the same run, a user whose chats run on their own model key (the
same upstream, saved with PUT /auth/me/model-key: the key looked up per turn, the address
guard on every connection) beside the operator's model, the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from httpx_sse import aconnect_sse

from tests.helpers import free_port
from tests.upstream import Scenario, Upstream

ROOT = Path(__file__).resolve().parent.parent


class TimedUpstream(Upstream):
    """Records, per request, how long it took to send the first token."""

    def __init__(self, tokens: int, interval: float) -> None:
        super().__init__("openai")
        self.default = Scenario(tokens=[f" t{i}" for i in range(tokens)], delay_between=interval)
        self.first_token_ms: list[float] = []
        self.lock = threading.Lock()
        self.app.add_route("/stats", self.stats, methods=["POST"])

    async def stats(self, _request):
        """The first-token times since the last call (and forget them)."""
        from starlette.responses import JSONResponse

        with self.lock:
            times, self.first_token_ms = self.first_token_ms, []
        return JSONResponse(times)

    async def _events(self, s, model, include_usage):
        started = time.perf_counter()
        first = True
        async for chunk in super()._events(s, model, include_usage):
            if first:
                with self.lock:
                    self.first_token_ms.append((time.perf_counter() - started) * 1000)
                first = False
            yield chunk


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(int(len(ordered) * 0.95) - 1, 0)]


async def one_stream(
    url: str, headers: dict[str, str], max_tokens: int
) -> tuple[float, float, int, float]:
    body = {
        "message": "Benchmark question",
        "max_tokens": max_tokens,
        "retrieval": {"enabled": False},
    }
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        started = time.perf_counter()
        first, count = None, 0
        async with aconnect_sse(http, "POST", "/chat/stream", json=body, headers=headers) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                raise RuntimeError(f"{source.response.status_code}: {source.response.text}")
            async for event in source.aiter_sse():
                if event.event == "token":
                    count += 1
                    first = first or time.perf_counter()
                elif event.event == "error":
                    raise RuntimeError(event.data)
                elif event.event == "done":
                    server_ttft = json.loads(event.data)["timings"]["ttft_ms"]
        end = time.perf_counter()
    assert first is not None
    rate = count / (end - first) if end > first else 0.0
    return (first - started) * 1000, rate, count, server_ttft


def account(http: httpx.Client, username: str) -> dict[str, str]:
    http.post("/auth/register", json={"username": username, "password": "bench-password"})
    token = http.post("/auth/token", data={"username": username, "password": "bench-password"})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


async def run(
    url: str, headers: dict[str, str], concurrency: int, max_tokens: int
) -> list[tuple[float, float, int, float]]:
    return await asyncio.gather(*(one_stream(url, headers, max_tokens) for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument(
        "--interval-ms", type=float, default=5.0, help="upstream pace between tokens"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="record the backend with py-spy into this file")
    parser.add_argument(
        "--own-key", action="store_true", help="also a user's own model key on the same upstream"
    )
    args = parser.parse_args()

    if args.serve_upstream:
        import uvicorn

        upstream = TimedUpstream(args.tokens, args.interval_ms / 1000)
        uvicorn.run(upstream.app, host="127.0.0.1", port=args.serve_upstream, log_level="warning")
        return
    # Upstream, backend and clients each in a process of their own, as they would be.
    up_port = free_port()
    serve = [
        sys.executable,
        "-m",
        "bench.remote_overhead",  # as a module: `tests` then imports from the checkout
        "--serve-upstream",
        str(up_port),
        "--tokens",
        str(args.tokens),
        "--interval-ms",
        str(args.interval_ms),
    ]
    upstream_process = subprocess.Popen(serve, cwd=ROOT)
    up = type("Up", (), {"url": f"http://127.0.0.1:{up_port}"})()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {
            **os.environ,
            "PORT": str(port),
            "DATA_DIR": tmp,
            "LLM_MODELS": json.dumps(
                [
                    {
                        "id": "remote",
                        "provider": "openai-compatible",
                        "model": "m",
                        "base_url": up.url,
                    }
                ]
            ),
            "LOG_LEVEL": "warning",
            # One user's many streams are the load here, not something to refuse.
            "LIMIT_REQUESTS": "1000000/minute",
            "LIMIT_STREAMS": "100000",
            "LIMIT_TOKENS_PER_DAY": "1000000000",
            "USER_KEY_ALLOWED_HOSTS": json.dumps([f"127.0.0.1:{up_port}"]),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        backend = subprocess.Popen([sys.executable, "-m", "backend"], cwd=ROOT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(240):
                try:
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            for _ in range(120):  # the upstream too, before a key to it is checked
                try:
                    httpx.post(f"{up.url}/stats", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.25)
            else:
                raise RuntimeError("the loopback upstream did not start")
            with httpx.Client(base_url=url) as http:
                users = {"operator's model": account(http, "bench")}
                if args.own_key:
                    own = account(http, "bench-own-key")
                    saved = http.put(
                        "/auth/me/model-key",
                        headers=own,
                        json={"provider": "openai-compatible", "api_key": "sk-bench-own-key",
                              "base_url": up.url, "model": "m"},
                    )  # fmt: skip
                    if saved.status_code != 200:
                        raise RuntimeError(f"saving the key: {saved.text}")
                    users["user's own key"] = own
            for headers in users.values():
                asyncio.run(run(url, headers, 2, 8))  # warm-up
            profiler = None
            if args.profile:  # py-spy samples the backend while the streams run
                profiler = subprocess.Popen(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(backend.pid),
                        "--duration",
                        "15",
                        "--format",
                        "raw",
                        "-o",
                        args.profile,
                        "--nonblocking",
                    ]
                )
            upstream_rate = 1000 / args.interval_ms
            print(
                f"upstream: first token at once, then {args.tokens} tokens every "
                f"{args.interval_ms} ms (~{upstream_rate:.0f} tokens/s); backend in its own "
                f"process; {os.cpu_count()} cores"
            )
            for (who, headers), concurrency in itertools.product(
                users.items(), (int(c) for c in args.concurrency.split(","))
            ):
                ttft, rates, upstream_ttft, server_ttft = [], [], [], []
                httpx.post(f"{up.url}/stats")
                for _ in range(args.rounds):
                    results = asyncio.run(run(url, headers, concurrency, args.tokens + 10))
                    ttft += [r[0] for r in results]
                    rates += [r[1] for r in results]
                    server_ttft += [r[3] for r in results]
                    upstream_ttft += httpx.post(f"{up.url}/stats").json()
                own = statistics.median(upstream_ttft)
                added = sorted(t - own for t in ttft)
                inside = sorted(t - own for t in server_ttft)
                print(
                    f"{who}, {concurrency:>3} concurrent: added before the first token, seen by the "
                    f"client p50 {statistics.median(added):.1f} ms p95 {p95(added):.1f} ms; "
                    f"inside the backend (question stored -> first token out) p50 "
                    f"{statistics.median(inside):.1f} ms p95 {p95(inside):.1f} ms; "
                    f"upstream's own {own:.2f} ms; relayed {statistics.median(rates):.1f} "
                    f"tokens/s a stream (upstream {upstream_rate:.0f})"
                )
            if profiler is not None:
                profiler.wait(timeout=60)
        finally:
            backend.terminate()
            backend.wait(timeout=30)
            upstream_process.terminate()
            upstream_process.wait(timeout=30)


if __name__ == "__main__":
    main()
