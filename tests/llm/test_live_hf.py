"""Llama-3 on Hugging Face serverless, for real: opt-in, runs only when HF_TOKEN is set
(and the machine can reach Hugging Face)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.helpers import build_app, live_server, register, stream_chat

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not os.environ.get("HF_TOKEN"), reason="live Hugging Face tests need HF_TOKEN"
    ),
]


def test_llama3_answers_through_the_hf_router(tmp_path: Path, sqlite_url: str) -> None:
    app = build_app(
        tmp_path,
        sqlite_url,
        llm_provider="huggingface",
        hf_token=os.environ["HF_TOKEN"],
        llm_first_token_timeout=60,
    )
    with live_server(app) as live, httpx.Client(base_url=live.url, timeout=120) as client:
        headers = register(client)
        result = stream_chat(
            client,
            headers,
            message="Reply with the single word: pong",
            max_tokens=10,
            retrieval={"enabled": False},
        )
        assert result.names()[-1] == "done", result.events[-1]
        assert result.first("meta")["model"] == "meta-llama/Meta-Llama-3-8B-Instruct"
        assert "pong" in result.text().lower()
