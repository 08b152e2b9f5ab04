"""The Streamlit app's only way to the backend: HTTP, through this client."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse

FINISH = {"on_disconnect": "finish"}  # a rerun or a cut connection loses nothing
RESUME_ATTEMPTS = 3

IN_WORDS = {
    413: "the request is larger than the server in front of the backend accepts",
    502: "the backend is not answering",
    503: "the backend is not available right now; try again shortly",
    504: "the backend took too long to answer",
}


class BackendError(Exception):
    """The backend refused the request or could not be reached; `message` is for people,
    `locations` (of a 422) say which request fields were refused."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        locations: list[tuple[str | int, ...]] | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.locations = locations or []
        self.reasons = reasons or [message]  # without the field names, for a known field

    def is_about(self, *field: str | int) -> bool:
        """Whether a refused field is `field` or lies inside it."""
        return any(loc[: len(field)] == field for loc in self.locations)

    @classmethod
    def of(cls, response: httpx.Response) -> BackendError:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            # Not ours: a proxy's HTML page, say. Words instead of markup.
            return cls(IN_WORDS.get(response.status_code, response.reason_phrase)
                       + f" (HTTP {response.status_code})", response.status_code)  # fmt: skip
        if not isinstance(detail, list):
            return cls(str(detail), response.status_code)
        # Validation errors: "field: message" each, the field without its "body" prefix.
        message = "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail
        )
        locations = [tuple(d.get("loc", [])) for d in detail]
        reasons = [str(d.get("msg")) for d in detail]
        return cls(message, response.status_code, locations, reasons)


@dataclass
class StreamedAnswer:
    """What the stream said besides its tokens, filled in while it is read."""

    meta: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    search_query: str | None = None  # what the sources were searched for
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    last_id: int = 0  # characters of the answer read so far (the last event's id)
    # The answer waits for the model: how many are ahead of it (1: next), until it starts.
    queued: int | None = None
    on_queued: Callable[[int | None], None] | None = None

    def queue_moved(self, position: int | None) -> None:
        if position != self.queued:
            self.queued = position
            if self.on_queued is not None:
                self.on_queued(position)

    @property
    def ended(self) -> bool:
        return self.done is not None or self.error is not None


class BackendClient:
    """One per browser session: its connections are kept and reused between requests."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, headers=self._headers(), **kwargs)
        except httpx.HTTPError as exc:
            raise BackendError(f"The backend at {self.base_url} is unreachable ({exc}).") from exc
        if response.status_code >= 400:
            raise BackendError.of(response)
        return response.json() if response.content else None

    def register(self, username: str, password: str) -> None:
        self._request("POST", "/auth/register", json={"username": username, "password": password})

    def login(self, username: str, password: str) -> str:
        body = self._request(
            "POST", "/auth/token", data={"username": username, "password": password}
        )
        self.token = body["access_token"]
        return self.token

    def me(self) -> dict[str, Any]:
        return self._request("GET", "/auth/me")

    def providers(self) -> dict[str, Any]:
        """How one may sign in: the password form, an OpenID Connect provider."""
        return self._request("GET", "/auth/providers")

    def redeem(self, ticket: str) -> str:
        """The token for a sign-in's one-time ticket (the provider sent the browser back)."""
        self.token = self._request("POST", "/auth/oidc/ticket", json={"ticket": ticket})[
            "access_token"
        ]
        return self.token

    def link_url(self, next_url: str) -> str:
        return self._request("POST", "/auth/oidc/link", json={"next": next_url})["url"]

    def model_key(self) -> dict[str, Any] | None:
        """The user's own model key, masked (None: none saved)."""
        try:
            return self._request("GET", "/auth/me/model-key")
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise

    def save_model_key(self, **key: str | None) -> dict[str, Any]:
        body = {name: value for name, value in key.items() if value}
        return self._request("PUT", "/auth/me/model-key", json=body)

    def delete_model_key(self) -> None:
        self._request("DELETE", "/auth/me/model-key")

    def export_feedback(self) -> bytes:
        """What users said about answers, as NDJSON (admins only)."""
        try:
            response = self.http.get("/admin/feedback/export", headers=self._headers())
        except httpx.HTTPError as exc:
            raise BackendError(f"The backend at {self.base_url} is unreachable ({exc}).") from exc
        if response.status_code >= 400:
            raise BackendError.of(response)
        return response.content

    def conversations(self) -> list[dict[str, Any]]:
        return self._request("GET", "/conversations", params={"limit": 100})["data"]

    def conversation(self, conversation_id: str) -> dict[str, Any]:
        return self._request("GET", f"/conversations/{conversation_id}")

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        self._request("PATCH", f"/conversations/{conversation_id}", json={"title": title})

    def delete_conversation(self, conversation_id: str) -> None:
        self._request("DELETE", f"/conversations/{conversation_id}")

    def models(self) -> list[dict[str, Any]]:
        return self._request("GET", "/models")["data"]

    def documents(self) -> list[dict[str, Any]]:
        return self._request("GET", "/documents", params={"limit": 500})["data"]

    def upload(
        self, filename: str, data: bytes, metadata: dict[str, Any], namespace: str = "private"
    ) -> dict[str, Any]:
        return self._request(
            "POST",
            "/documents/upload",
            files={"file": (filename, data)},
            data={"metadata": json.dumps(metadata), "namespace": namespace},
        )

    def delete_document(self, document_id: str, namespace: str) -> None:
        self._request("DELETE", f"/documents/{document_id}", params={"namespace": namespace})

    def feedback(self, message_id: str, rating: int, comment: str | None = None) -> None:
        self._request(
            "POST", f"/messages/{message_id}/feedback", json={"rating": rating, "comment": comment}
        )

    def stream_chat(
        self,
        message: str,
        conversation_id: str | None,
        answer: StreamedAnswer,
        options: dict[str, Any] | None = None,
    ) -> Iterator[str]:
        """Yield the answer's tokens; `answer` receives its place in line (status), meta,
        sources and the end event. The answer goes on if this reader leaves (`finish`), and
        a broken connection is resumed where it broke."""
        body = {"message": message, "conversation_id": conversation_id, **(options or {})}
        return self._stream("POST", "/chat/stream", answer, json={**body, **FINISH})

    def regenerate(
        self, conversation_id: str, answer: StreamedAnswer, options: dict[str, Any] | None = None
    ) -> Iterator[str]:
        path = f"/conversations/{conversation_id}/regenerate"
        return self._stream("POST", path, answer, json={**(options or {}), **FINISH})

    def revise(
        self,
        message_id: str,
        feedback: str,
        answer: StreamedAnswer,
        options: dict[str, Any] | None = None,
    ) -> Iterator[str]:
        """A new answer written from answer `message_id` and the user's `feedback`."""
        body = {**(options or {}), "feedback": feedback, **FINISH}
        return self._stream("POST", f"/messages/{message_id}/revise", answer, json=body)

    def edit(
        self,
        message_id: str,
        message: str,
        answer: StreamedAnswer,
        options: dict[str, Any] | None = None,
    ) -> Iterator[str]:
        """The question `message_id` asked again as `message`, in a new branch."""
        body = {**(options or {}), "message": message, **FINISH}
        return self._stream("POST", f"/messages/{message_id}/edit", answer, json=body)

    def choose_branch(self, conversation_id: str, message_id: str) -> None:
        self._request(
            "PUT", f"/conversations/{conversation_id}/branch", json={"message_id": message_id}
        )

    def resume(self, message_id: str, answer: StreamedAnswer) -> Iterator[str]:
        """The tokens of an answer after the `answer.last_id` characters already read, live
        while it is still being generated."""
        return self._stream("GET", f"/messages/{message_id}/stream", answer)

    def stop(self, message_id: str) -> None:
        self._request("POST", f"/messages/{message_id}/stop")

    def _stream(
        self, method: str, path: str, answer: StreamedAnswer, **request: Any
    ) -> Iterator[str]:
        for attempt in range(RESUME_ATTEMPTS + 1):
            try:
                yield from self._read(method, path, answer, **request)
                return
            except httpx.HTTPError as exc:
                message_id = answer.meta.get("assistant_message_id")
                if message_id is None or attempt == RESUME_ATTEMPTS:
                    raise BackendError(f"The connection to the backend broke ({exc}).") from exc
                # Cut mid-answer (a proxy, a restart): go on from the last event read.
                method, path, request = "GET", f"/messages/{message_id}/stream", {}
                time.sleep(0.5 * (attempt + 1))

    def _read(
        self, method: str, path: str, answer: StreamedAnswer, **request: Any
    ) -> Iterator[str]:
        headers = self._headers()
        if method == "GET":
            headers["Last-Event-ID"] = str(answer.last_id)
        with connect_sse(
            self.http,
            method,
            path,
            headers=headers,
            timeout=httpx.Timeout(self.timeout, read=300),
            **request,
        ) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise BackendError.of(source.response)
            for event in source.iter_sse():
                data = json.loads(event.data)
                if event.id:
                    answer.last_id = int(event.id)
                if event.event == "token":
                    yield data["text"]
                elif event.event == "status":
                    answer.queue_moved(data.get("position"))
                elif event.event == "meta":
                    answer.queue_moved(None)  # its turn came
                    answer.meta = data
                elif event.event == "sources":
                    answer.sources = data["sources"]
                    answer.search_query = data.get("query")
                elif event.event == "done":
                    answer.done = data
                elif event.event == "error":
                    answer.error = data
