"""Metrics, request ids and structured logs."""

from __future__ import annotations

import json
import logging
import re

import httpx

from backend.common.logs import JsonFormatter, configure, request_id
from tests.helpers import LiveServer, register, stream_chat


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample.split("{")[0] == name and all(f'{k}="{v}"' in sample for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_count_requests_answers_and_time_to_first_token(
    client: httpx.Client, server: LiveServer
) -> None:
    headers = register(client)
    stream_chat(client, headers, message="Hi")
    client.post("/search", json={"query": "anything"}, headers=headers)
    client.get("/conversations/nope", headers=headers)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, "ragstream_http_requests_total", route="/chat/stream", status="200") == 1
    assert (
        metric(
            text,
            "ragstream_http_requests_total",
            route="/conversations/{conversation_id}",
            status="404",
        )
        == 1
    )
    assert metric(text, "ragstream_answers_total", model="fake-model", status="complete") == 1
    assert metric(text, "ragstream_time_to_first_token_seconds_count", model="fake-model") == 1
    assert metric(text, "ragstream_tokens_per_second_count", model="fake-model") == 1
    assert metric(text, "ragstream_completion_tokens_total", model="fake-model") > 0
    assert metric(text, "ragstream_retrieval_seconds_count") == 2


def test_every_response_carries_a_request_id(client: httpx.Client) -> None:
    generated = client.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert (
        client.get("/health", headers={"X-Request-ID": "trace-42"}).headers["x-request-id"]
        == "trace-42"
    )
    # A malformed id is replaced, not echoed (control characters do not even get that far:
    # the HTTP parser refuses them with 400).
    assert (
        client.get("/health", headers={"X-Request-ID": "bad id;<x>"}).headers["x-request-id"]
        != "bad id;<x>"
    )
    assert client.get("/health", headers={"X-Request-ID": "bad\x7f"}).status_code == 400


def test_json_logs_carry_the_request_id_and_instance() -> None:
    record = logging.LogRecord(
        "backend.test", logging.WARNING, __file__, 1, "model %s failed", ("m",), None
    )
    record.request_id = "abc123"
    entry = json.loads(JsonFormatter("replica-7").format(record))
    assert entry["message"] == "model m failed"
    assert (entry["level"], entry["request_id"], entry["instance"]) == (
        "warning",
        "abc123",
        "replica-7",
    )


def test_configured_logging_stamps_records_with_the_current_request(capsys) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure(level="info", fmt="json", instance="replica-1")
        token = request_id.set("req-9")
        logging.getLogger("backend.x").info("hello")
        request_id.reset(token)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert json.loads(line)["request_id"] == "req-9"
