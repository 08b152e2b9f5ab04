"""What went wrong with a model, in terms the service acts on and users can act on.

Each client library reports failures its own way (huggingface_hub: `HfHubHTTPError` for
every status; openai: a class per status; httpx: timeouts and broken connections); here
they become one `ModelFailure` with a kind, whether a retry may help, how long the provider
asked us to wait, whether the next model should be tried, and a short message for users.
Messages never carry tokens, keys or upstream bodies verbatim.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

import httpx

# kind -> (code for the `error` event, retry helps, next model should be tried, message)
KINDS: dict[str, tuple[str, bool, bool, str]] = {
    "rate_limited": (
        "rate_limited",
        True,
        True,
        "The model is busy (rate limited); try again{wait}.",
    ),
    "loading": ("model_loading", True, True, "The model is loading; try again{wait}."),
    "overloaded": ("model_overloaded", True, True, "The model is overloaded; try again{wait}."),
    "unreachable": (
        "model_unreachable",
        True,
        True,
        "The model server could not be reached; try again shortly.",
    ),
    "timeout": (
        "model_timeout",
        True,
        True,
        "The model did not start answering in time; try again.",
    ),
    "auth": (
        "model_auth",
        False,
        True,
        "The model provider rejected the token; check HF_TOKEN or LLM_API_KEY.",
    ),
    "payment": (
        "model_payment",
        False,
        True,
        "The model provider refused: payment or credits are needed for this model.",
    ),
    "not_found": (
        "model_not_found",
        False,
        True,
        "The model provider does not know this model; check the model name.",
    ),
    "bad_request": (
        "model_bad_request",
        False,
        False,
        "The model provider refused the request (it may be too long); "
        "shorten it or lower max_tokens.",
    ),
    "stalled": (
        "model_stalled",
        False,
        False,
        "The model stopped answering mid-way; the partial answer was kept.",
    ),
    "connection_lost": (
        "model_connection_lost",
        False,
        False,
        "The connection to the model broke mid-answer; the partial answer was kept.",
    ),
    "address_refused": (
        "model_address_refused",
        False,
        False,
        "This model server's address is refused.",
    ),
    "redirected": (
        "model_redirected",
        False,
        False,
        "The model server answered with a redirect, which is not followed.",
    ),
    "upstream": (
        "model_error",
        False,
        False,
        "The model failed while answering; please try again.",
    ),
}


class ModelFailure(Exception):
    def __init__(self, kind: str, *, retry_after: float | None = None, detail: str = "") -> None:
        self.kind = kind
        self.retry_after = retry_after
        self.detail = detail  # for logs only: never shown to users
        code, retryable, fallback, _ = KINDS[kind]
        self.code, self.retryable, self.fallback = code, retryable, fallback
        self.message: str | None = None  # set: what users read instead of the kind's text
        super().__init__(f"{kind}: {detail}" if detail else kind)

    def user_message(self) -> str:
        if self.message:
            return self.message
        wait = f" in {round(self.retry_after)} s" if self.retry_after else ""
        return KINDS[self.kind][3].format(wait=wait)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(float(value), 0.0) if value is not None else None
    except (TypeError, ValueError):
        return None


def _body(response: Any) -> dict[str, Any]:
    try:
        data = response.json()
    except (ValueError, json.JSONDecodeError, AttributeError, httpx.ResponseNotRead):
        return {}
    return data if isinstance(data, dict) else {}


def from_status(
    status: int, headers: Any = None, body: dict[str, Any] | None = None
) -> ModelFailure:
    body = body or {}
    error = body.get("error")
    error_type = body.get("error_type") or (error.get("type") if isinstance(error, dict) else None)
    message = error.get("message") if isinstance(error, dict) else error
    detail = (
        f"HTTP {status}"
        + (f" {error_type}" if error_type else "")
        + (f": {str(message)[:200]}" if message else "")
    )
    retry_after = _retry_after(headers)
    if status == 503 and "estimated_time" in body:
        with contextlib.suppress(TypeError, ValueError):  # a malformed hint: keep the header's
            retry_after = float(body["estimated_time"])
        return ModelFailure("loading", retry_after=retry_after, detail=detail)
    if status == 503 and isinstance(message, str) and re.search(r"loading", message, re.I):
        return ModelFailure("loading", retry_after=retry_after, detail=detail)
    if status == 429 or error_type == "overloaded":
        kind = "overloaded" if error_type == "overloaded" and status != 429 else "rate_limited"
        return ModelFailure(kind, retry_after=retry_after, detail=detail)
    if status in (401, 403):
        return ModelFailure("auth", detail=detail)
    if status == 402:
        return ModelFailure("payment", detail=detail)
    if status == 404:
        return ModelFailure("not_found", detail=detail)
    if status in (400, 413, 422):
        return ModelFailure("bad_request", detail=detail)
    if status in (500, 502, 503, 504, 424):
        return ModelFailure(
            "overloaded" if status in (502, 503, 504) else "upstream",
            retry_after=retry_after,
            detail=detail,
        )
    return ModelFailure("upstream", detail=detail)


def classify(exc: BaseException, *, started: bool) -> ModelFailure:
    """`started`: tokens were already received (a broken connection is then 'connection_lost')."""
    if isinstance(exc, ModelFailure):
        return exc
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if isinstance(status, int) and status >= 400:
        return from_status(status, getattr(response, "headers", None), _body(response))
    try:  # openai's connection and timeout errors
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return ModelFailure("stalled" if started else "timeout", detail=type(exc).__name__)
        if isinstance(exc, openai.APIConnectionError):
            return ModelFailure(
                "connection_lost" if started else "unreachable", detail=str(exc)[:200]
            )
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return ModelFailure("stalled" if started else "timeout", detail=type(exc).__name__)
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return ModelFailure(
            "connection_lost" if started else "unreachable",
            detail=f"{type(exc).__name__}: {exc}"[:200],
        )
    text = str(exc)
    # huggingface_hub raises on an SSE payload carrying "error" mid-stream.
    if "error" in text.lower() and started:
        return ModelFailure("upstream", detail=text[:200])
    return ModelFailure("upstream", detail=f"{type(exc).__name__}: {text[:200]}")
