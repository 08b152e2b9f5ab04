"""Many readers at once: the service against a bare relay of the same upstream, in one run.

A loopback OpenAI-compatible upstream (tests/upstream.py) answers at once, then sends
`--tokens` tokens every `--interval-ms`; N clients call `POST /chat/stream` together, on
ragstream (`python -m backend`: SQLite, retrieval off, one provider at a time) and on the
bare relay (bench/bare_relay.py). Each server is a process of its own; its CPU time (the
process and its children, from /proc) is read before and after each round.

Printed, for each client count: first token p50/p99, relayed tokens/s and CPU per 1,000
relayed tokens, for both servers, and the ratios; then the one-token case (CPU per answer)
and the backend's resident memory with the most streams open.

    .venv/bin/python -m bench.relay_load [--clients 1,50,200] [--providers openai,hf]
        [--workers 1,2] [--profile FILE]
    .venv/bin/python -m bench.relay_load --instructions [--providers openai,hf]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import free_port, process_tree

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
PROVIDERS = {
    "openai": lambda url: {"id": "m", "provider": "openai-compatible", "model": "m", "base_url": url},
    "hf": lambda url: {"id": "m", "provider": "huggingface", "model": "meta-llama/Meta-Llama-3-8B-Instruct", "base_url": url},
}  # fmt: skip


# The service's limits, out of the way of a benchmark's crowd of one user.
_LIMITLESS = {"LIMIT_REQUESTS": "1000000/minute", "LIMIT_STREAMS": "100000",
              "LIMIT_REGISTRATIONS": "1000/hour", "LIMIT_TOKENS_PER_DAY": "1000000000"}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / TICKS


def rss_mb(pid: int) -> float:
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


@contextmanager
def process(args: list[str], url: str, env: dict[str, str] | None = None) -> Iterator[int]:
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})})
    try:
        for _ in range(600):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise SystemExit(f"{args} exited with {proc.returncode}") from None
                time.sleep(0.2)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT only
        proc.wait(timeout=60)


@dataclass
class Round:
    first_ms: list[float]
    tokens: int
    seconds: float
    cpu: float
    failed: int
    rss_mb: float


async def _stream(
    http: httpx.AsyncClient, headers: dict[str, str], max_tokens: int, start: asyncio.Event
) -> tuple[float | None, int, bool]:
    body = {
        "message": "Benchmark question",
        "max_tokens": max_tokens,
        "retrieval": {"enabled": False},
    }
    await start.wait()
    began = time.perf_counter()
    first, tokens, event = None, 0, ""
    try:
        async with http.stream("POST", "/chat/stream", json=body, headers=headers) as response:
            if response.status_code != 200:
                return None, 0, False
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "token":
                    first = first or time.perf_counter()
                    tokens += 1  # an event may carry several coalesced tokens: counted below
                elif line.startswith("data:") and event in ("done", "error"):
                    return ((first - began) * 1000 if first else None), tokens, event == "done"
    except httpx.HTTPError:
        return None, tokens, False
    return ((first - began) * 1000 if first else None), tokens, False


async def load(url: str, pid: int, headers: dict[str, str], clients: int, max_tokens: int) -> Round:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        start = asyncio.Event()
        tasks = [
            asyncio.create_task(_stream(http, headers, max_tokens, start)) for _ in range(clients)
        ]
        await asyncio.sleep(0.2)
        cpu_before, began = cpu_seconds(pid), time.perf_counter()
        start.set()
        await asyncio.sleep(1.0)
        rss = rss_mb(pid)  # streams open
        results = await asyncio.gather(*tasks)
        seconds = time.perf_counter() - began
        cpu = cpu_seconds(pid) - cpu_before
    firsts = [r[0] for r in results if r[0] is not None]
    return Round(
        firsts, sum(r[1] for r in results), seconds, cpu, sum(not r[2] for r in results), rss
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * q), len(ordered) - 1)] if ordered else float("nan")


def register(url: str) -> dict[str, str]:
    with httpx.Client(base_url=url) as http:
        http.post("/auth/register", json={"username": "bench", "password": "bench-password"})
        token = http.post("/auth/token", data={"username": "bench", "password": "bench-password"})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", default="1,50,200")
    parser.add_argument("--providers", default="openai,hf")
    parser.add_argument("--workers", default="1,2", help="WORKERS of the service, one run each")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--answers", type=int, default=50, help="clients of the one-token case")
    parser.add_argument(
        "--stream-save-seconds", help="STREAM_SAVE_SECONDS of the service (0: save at the end only)"
    )
    parser.add_argument(
        "--profile", metavar="FILE", help="run the service under py-spy, collapsed stacks to FILE"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="only the one-token case, both servers under valgrind's callgrind (1 worker): "
        "instructions per answer, which CPU contention does not move",
    )
    parser.add_argument("--serve-upstream", nargs=2, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_upstream:  # a child process: the upstream alone
        import uvicorn

        from tests.upstream import Scenario, Upstream

        port, tokens = (int(v) for v in args.serve_upstream)
        upstream = Upstream("openai")
        upstream.default = Scenario(
            tokens=[f" t{i}" for i in range(tokens)], delay_between=args.interval_ms / 1000
        )
        uvicorn.run(upstream.app, host="127.0.0.1", port=port, log_level="warning")
        return

    def upstream_command(tokens: int) -> tuple[list[str], str]:
        port = free_port()
        command = [sys.executable, "-m", "bench.relay_load", "--interval-ms", str(args.interval_ms), "--serve-upstream", str(port), str(tokens)]  # fmt: skip
        return command, f"http://127.0.0.1:{port}"

    print(f"{os.cpu_count()} cores; upstream: {args.tokens} tokens every {args.interval_ms} ms")
    long_cmd, long_url = upstream_command(args.tokens)
    short_cmd, short_url = upstream_command(1)
    with process(long_cmd, long_url), process(short_cmd, short_url):
        if args.instructions:
            for provider in args.providers.split(","):
                count_instructions(args, provider, short_url)
            return
        for workers in args.workers.split(","):
            for provider in args.providers.split(","):
                print(f"\n== provider {provider}, {workers} worker(s) ==")
                report(args, provider, long_url, short_url, workers)


def serve_both(
    provider: str,
    upstream_url: str,
    tmp: str,
    extra: dict[str, str],
    wrap_backend: list[str] | None = None,
    wrap_relay: list[str] | None = None,
) -> tuple[AbstractContextManager[int], str, AbstractContextManager[int], str]:
    """The bare relay and the service on `upstream_url`, each run by a `wrap_…` command
    (a profiler) when one is given."""
    relay_port, port = free_port(), free_port()
    relay_command = [*(wrap_relay or []), sys.executable, "-m", "bench.bare_relay", upstream_url, str(relay_port)]  # fmt: skip
    relay = process(relay_command, f"http://127.0.0.1:{relay_port}/docs")
    env = {"PORT": str(port), "DATA_DIR": tmp, "LOG_LEVEL": "warning", "HF_HUB_DISABLE_TELEMETRY": "1",
           "LLM_MODELS": json.dumps([PROVIDERS[provider](upstream_url)]), **extra}  # fmt: skip
    command = [*(wrap_backend or []), sys.executable, "-m", "backend"]
    backend = process(command, f"http://127.0.0.1:{port}/ready", env)
    return relay, f"http://127.0.0.1:{relay_port}", backend, f"http://127.0.0.1:{port}"


def _py_spy(path: str | None, answers: bool) -> list[str] | None:
    """py-spy around the service; the profile of one round goes to FILE for the long
    answers, FILE.answers for the one-token ones."""
    if path is None:
        return None
    output = path + (".answers" if answers else "")
    py_spy = str(Path(sys.executable).parent / "py-spy")
    return [py_spy, "record", "--subprocesses", "--rate", "250", "--format", "raw", "-o", output, "--"]  # fmt: skip


def warm_up(url: str, pid: int, relay_url: str, relay_pid: int) -> dict[str, str]:
    """Register the benchmark's user and answer enough at once that every worker has
    answered (a worker's first answer is slower, ~90 ms to its first token, once), and a
    few through the bare relay; returns the user's headers."""
    headers = register(url)
    asyncio.run(load(url, pid, headers, 16, 8))
    asyncio.run(load(relay_url, relay_pid, {}, 4, 8))
    return headers


def _callgrind(output: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={output}"]


def _instructions(pid: int, output: str, run: Callable[[], Round]) -> tuple[int, Round]:
    """The instructions the process `pid` (under `_callgrind(output)`) runs during `run`."""

    def control(option: str) -> None:
        subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)

    control("--instr=on")
    round_ = run()
    control("--dump")
    control("--instr=off")
    dump = max(Path(output).parent.glob(Path(output).name + ".*"), key=lambda p: p.stat().st_mtime)
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1]), round_
    raise SystemExit(f"no totals in {dump}")


def count_instructions(args: argparse.Namespace, provider: str, short_url: str) -> None:
    """The one-token case with both servers under callgrind: instructions per answer.
    Unlike CPU seconds on a shared machine, the count mostly repeats within 0.1 % (a few
    percent at times: run it twice); the time a server spends in the kernel is not in it."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind: apt-get install valgrind")
    clients = args.answers
    with tempfile.TemporaryDirectory() as tmp:
        ours_out, bare_out = f"{tmp}/backend.cg", f"{tmp}/relay.cg"
        relay, relay_url, backend, url = serve_both(
            provider, short_url, tmp, {**_LIMITLESS, "WORKERS": "1"}, _callgrind(ours_out), _callgrind(bare_out)
        )  # fmt: skip
        with relay as relay_pid, backend as pid:
            headers = warm_up(url, pid, relay_url, relay_pid)
            ours, ours_round = _instructions(pid, ours_out, lambda: asyncio.run(load(url, pid, headers, clients, 8)))  # fmt: skip
            bare, bare_round = _instructions(relay_pid, bare_out, lambda: asyncio.run(load(relay_url, relay_pid, {}, clients, 8)))  # fmt: skip
    print(
        f"{provider}: one-token answers, {clients} at once, under callgrind: instructions per "
        f"answer {ours / clients / 1e6:.2f} M vs bare {bare / clients / 1e6:.2f} M "
        f"(ratio {ours / bare:.2f}); failed {ours_round.failed}/{bare_round.failed}"
    )


def report(
    args: argparse.Namespace, provider: str, long_url: str, short_url: str, workers: str
) -> None:
    header = "clients | first token p50/p99 ms: ragstream | bare | tokens/s: ragstream | bare | ratio | CPU s/1k tokens: ragstream | bare | ratio | failed"
    print(header)
    for upstream_url, cases in (
        (long_url, [int(c) for c in args.clients.split(",")]),
        (short_url, [args.answers]),
    ):
        with tempfile.TemporaryDirectory() as tmp:
            extra = {**_LIMITLESS, "WORKERS": workers}
            if args.stream_save_seconds is not None:
                extra["STREAM_SAVE_SECONDS"] = args.stream_save_seconds
            relay, relay_url, backend, url = serve_both(
                provider,
                upstream_url,
                tmp,
                extra,
                _py_spy(args.profile, upstream_url == short_url),
            )
            with relay as relay_pid, backend as pid:
                headers = warm_up(url, pid, relay_url, relay_pid)
                for clients in cases:
                    ours = asyncio.run(load(url, pid, headers, clients, args.tokens + 10))
                    bare = asyncio.run(load(relay_url, relay_pid, {}, clients, args.tokens + 10))
                    if upstream_url == short_url:
                        print(
                            f"one-token answers, {clients} at once: CPU per 1,000 answers "
                            f"{ours.cpu / clients * 1000:.1f} s vs bare {bare.cpu / clients * 1000:.1f} s "
                            f"(ratio {ours.cpu / max(bare.cpu, 1e-9):.1f}); first token p50 "
                            f"{statistics.median(ours.first_ms):.0f} vs {statistics.median(bare.first_ms):.0f} ms; "
                            f"failed {ours.failed}/{bare.failed}"
                        )
                        continue
                    expected = clients * args.tokens
                    print(
                        f"{clients:>7} | {statistics.median(ours.first_ms):.0f}/{percentile(ours.first_ms, 0.99):.0f}"
                        f" | {statistics.median(bare.first_ms):.0f}/{percentile(bare.first_ms, 0.99):.0f}"
                        f" | {expected / ours.seconds:.0f} | {expected / bare.seconds:.0f}"
                        f" | {bare.seconds / ours.seconds:.2f}"
                        f" | {ours.cpu / expected * 1000:.2f} | {bare.cpu / expected * 1000:.2f}"
                        f" | {ours.cpu / max(bare.cpu, 1e-9):.1f}x"
                        f" | {ours.failed}/{bare.failed}"
                        + (
                            f" | backend RSS {ours.rss_mb:.0f} MB with {clients} streams open"
                            if clients == max(cases)
                            else ""
                        )
                    )


if __name__ == "__main__":
    main()
