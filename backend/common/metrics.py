"""Prometheus metrics (`GET /metrics`): requests, time to first token, tokens/s, retrieval
latency, errors by kind. Each app has its own registry (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "ragstream_http_requests_total",
            "HTTP requests",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "ragstream_http_request_seconds",
            "Time to the response's start",
            ["method", "route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ttft = Histogram(
            "ragstream_time_to_first_token_seconds",
            "Question stored to first token",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "ragstream_tokens_per_second",
            "Answer tokens per second of generation",
            ["model"],
            buckets=(1, 5, 10, 20, 40, 80, 160, 320, 640),
            registry=r,
        )
        self.tokens = Counter(
            "ragstream_completion_tokens_total", "Answer tokens", ["model"], registry=r
        )
        self.retrieval_seconds = Histogram(
            "ragstream_retrieval_seconds",
            "Search time for a chat turn or /search",
            buckets=_LATENCY,
            registry=r,
        )
        self.answers = Counter(
            "ragstream_answers_total", "Answers by final status", ["model", "status"], registry=r
        )
        self.errors = Counter(
            "ragstream_errors_total",
            "Errors by kind (the `error` event's code)",
            ["code"],
            registry=r,
        )

    def render(self) -> bytes:
        return _generate(self.registry)
