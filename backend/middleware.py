"""Per-request context: a request id (from X-Request-ID or new) for logs and the response,
and the request metrics. Plain ASGI, so streamed responses pass through untouched."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from backend.logs import request_id
from backend.metrics import Metrics

_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

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
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
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
