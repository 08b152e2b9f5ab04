"""Per-request context: a request id (from X-Request-ID or new) for logs and the response,
the usual security headers on every response, and the request metrics. Plain ASGI, so
streamed responses pass through untouched."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from backend.common.logs import request_id
from backend.common.metrics import Metrics

_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# An API that serves no pages may run nothing; the interactive docs load their scripts.
API_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


class RequestContextMiddleware:
    def __init__(self, app: Any, metrics: Metrics, *, production: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.headers = SECURITY_HEADERS + ([HSTS] if production else [])

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", rid.encode()),
                    *self.headers,
                    *(() if scope["path"].startswith(DOCS_PATHS) else (API_CSP,)),
                ]
                self.metrics.request_seconds.labels(scope["method"], _route(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status)).inc()
            request_id.reset(token)


def _route(scope: dict) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
