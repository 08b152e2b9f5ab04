"""`python -m backend` with two worker processes (and the one local-model process they
share), on SQLite and on PostgreSQL: what a user does through one worker is seen through
the other at once; migrations run once; a killed supervisor leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import child_processes, free_port, ingest, register

pytestmark = pytest.mark.model  # the workers share the bundled SmolLM2


@pytest.fixture
def two_workers(tmp_path: Path, database_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    log = tmp_path / "backend.log"
    env = {
        **os.environ,
        "PORT": str(port),
        "WORKERS": "2",
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "LOG_FORMAT": "text",
        "LLM_QUEUE_MAX": "4",
        "MAX_TOKENS_DEFAULT": "16",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "backend"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=60)


def _on_each_worker(url: str, use: Callable[[httpx.Client, int], Any]) -> dict[int, Any]:
    """`use(connection, worker pid)` on fresh connections until both workers were used."""
    results: dict[int, Any] = {}
    for _ in range(200):
        with httpx.Client(base_url=url, timeout=60) as connection:
            worker = connection.get("/ready").json()["worker"]
            if worker not in results:
                results[worker] = use(connection, worker)
        if len(results) == 2:
            return results
    raise AssertionError(f"only workers {list(results)} answered")


def test_what_one_worker_does_the_other_sees(two_workers: tuple[str, Any]) -> None:
    url, process = two_workers
    with httpx.Client(base_url=url, timeout=60) as first:
        writer = first.get("/ready").json()["worker"]
        headers = register(first)  # a token issued by one worker...
        ingest(
            first,
            headers,
            {"id": "tides", "text": "Spring tides come twice a month, at new and full moon."},
        )

    def search(connection: httpx.Client, worker: int) -> tuple[int, float]:
        me = connection.get("/auth/me", headers=headers)  # ...accepted by every worker
        assert me.status_code == 200, me.text
        started = time.monotonic()
        while True:  # found as soon as the other worker's store and statistics caught up
            found = connection.post(
                "/search", json={"query": "spring tides moon"}, headers=headers
            ).json()
            if [r["document_id"] for r in found["results"]] == ["tides"]:
                return me.status_code, time.monotonic() - started
            assert time.monotonic() - started < 10, found
            time.sleep(0.05)

    seen = _on_each_worker(url, search)
    assert writer in seen
    assert all(status == 200 for status, _ in seen.values())

    # Both workers answer with the one shared model process.
    def chat(connection: httpx.Client, worker: int) -> str:
        response = connection.post(
            "/chat", json={"message": "Say hi", "retrieval": {"enabled": False}}, headers=headers
        )
        assert response.status_code == 200, response.text
        return response.json()["message"]["status"]

    assert set(_on_each_worker(url, chat).values()) == {"complete"}
    processes = child_processes().get(process.pid, [])
    hosts = [p for p in processes if b"backend.llm.host" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(hosts) == 1


def test_migrations_run_once_and_a_killed_supervisor_leaves_nothing_behind(
    two_workers: tuple[str, Any], tmp_path: Path, database_url: str
) -> None:
    _, process = two_workers
    if database_url.startswith("sqlite"):  # a fresh database: migrated by the supervisor only
        log = (tmp_path / "backend.log").read_text()
        assert log.count("Running upgrade  -> 0001") == 1, log[-3000:]
    children = child_processes().get(process.pid, [])
    assert len(children) >= 3  # two workers and the model process
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() and _alive(p) for p in children):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
