"""The Streamlit app's only way to the backend: HTTP, through this client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import connect_sse


class BackendError(Exception):
    """The backend refused the request or could not be reached; `message` is for people."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text or response.reason_phrase
    if isinstance(detail, list):  # validation errors: "field: message"
        return "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])[1:]))}: {d.get('msg')}" for d in detail
        )
    return str(detail)


@dataclass
class StreamedAnswer:
    """What the stream said besides its tokens, filled in while it is read."""

    meta: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class BackendClient:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            with httpx.Client(base_url=self.base_url, timeout=self.timeout) as http:
                response = http.request(method, path, headers=self._headers(), **kwargs)
        except httpx.HTTPError as exc:
            raise BackendError(f"The backend at {self.base_url} is unreachable ({exc}).") from exc
        if response.status_code >= 400:
            raise BackendError(_detail(response), response.status_code)
        return response.json() if response.content else None

    def register(self, username: str, password: str) -> None:
        self._request("POST", "/auth/register", json={"username": username, "password": password})

    def login(self, username: str, password: str) -> str:
        body = self._request(
            "POST", "/auth/token", data={"username": username, "password": password}
        )
        self.token = body["access_token"]
        return self.token

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
        """Yield the answer's tokens; `answer` receives meta, sources and the end event."""
        body = {"message": message, "conversation_id": conversation_id, **(options or {})}
        return self._stream("/chat/stream", body, answer)

    def regenerate(
        self, conversation_id: str, answer: StreamedAnswer, options: dict[str, Any] | None = None
    ) -> Iterator[str]:
        return self._stream(f"/conversations/{conversation_id}/regenerate", options or {}, answer)

    def _stream(self, path: str, body: dict[str, Any], answer: StreamedAnswer) -> Iterator[str]:
        try:
            with httpx.Client(
                base_url=self.base_url, timeout=httpx.Timeout(self.timeout, read=300)
            ) as http:
                with connect_sse(http, "POST", path, json=body, headers=self._headers()) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise BackendError(_detail(source.response), source.response.status_code)
                    for event in source.iter_sse():
                        data = json.loads(event.data)
                        if event.event == "token":
                            yield data["text"]
                        elif event.event == "meta":
                            answer.meta = data
                        elif event.event == "sources":
                            answer.sources = data["sources"]
                        elif event.event == "done":
                            answer.done = data
                        elif event.event == "error":
                            answer.error = data
        except httpx.HTTPError as exc:
            raise BackendError(f"The connection to the backend broke ({exc}).") from exc
