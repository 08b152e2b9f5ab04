"""A replica killed mid-answer (SIGKILL: no shutdown, no last write) and started again: the
conversation keeps the answer `interrupted`, with all that its reader saw but the last
second at most."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port, live_server, read_then_leave, register
from tests.upstream import Scenario, Upstream


@pytest.fixture
def slow_upstream() -> Iterator[str]:
    upstream = Upstream("openai")
    upstream.default = Scenario(tokens=[f"token{n} " for n in range(2000)], delay_between=0.02)
    with live_server(upstream.app) as live:
        yield live.url


def start_backend(tmp_path: Path, upstream_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(tmp_path),
        "LLM_PROVIDER": "openai-compatible",
        "LLM_MODEL": "slow-model",
        "LLM_BASE_URL": upstream_url,
        "STREAM_STALE_SECONDS": "2",
        "LOG_FORMAT": "text",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "backend"],
        env=env,
        stdout=(tmp_path / f"backend-{port}-{time.monotonic()}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, "the backend exited"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the backend never became ready")


def test_a_killed_replica_leaves_the_answer_interrupted_with_what_was_read(
    tmp_path: Path, slow_upstream: str
) -> None:
    port = free_port()
    process = start_backend(tmp_path, slow_upstream, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        headers = register(client)
        # Two seconds of reading; the answer goes on (`finish`) until the kill.
        meta, received, _ = read_then_leave(client, headers, 800, on_disconnect="finish")
        os.kill(process.pid, signal.SIGKILL)
        killed_at = received.count("token")
        process.wait(timeout=30)
    finally:
        client.close()

    process = start_backend(tmp_path, slow_upstream, port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        url = f"/conversations/{meta['conversation_id']}"
        deadline = time.monotonic() + 30
        while True:
            answer = client.get(url, headers=headers).json()["messages"][-1]
            if answer["status"] != "streaming" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer["id"] == meta["assistant_message_id"]
        with sqlite3.connect(tmp_path / "ragstream.db") as database:
            left = database.execute("SELECT count(*) FROM messages WHERE status = 'streaming'")
            assert left.fetchone() == (0,)  # no row is left streaming
        assert answer["status"] == "interrupted"
        saved = answer["content"]
        assert saved.startswith(received[: len(saved)])  # the same text, cut somewhere
        # Saved every STREAM_SAVE_SECONDS (0.5 s): of what the reader saw, no more than the
        # last second is missing (50 tokens of 20 ms).
        lost = received[len(saved) :]
        assert len(saved) > 0
        assert lost.count("token") <= 50, f"lost {lost.count('token')} of {killed_at} tokens"
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
