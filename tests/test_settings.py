from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.settings import DEFAULT_SECRET_KEY, Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_default_secret_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY is the built-in development key"):
        settings(environment="production")
    assert settings(environment="production", secret_key="x" * 40).secret_key == "x" * 40
    with pytest.raises(ValidationError, match="shorter than 32 characters"):
        settings(environment="production", secret_key="short")
    assert settings().secret_key == DEFAULT_SECRET_KEY


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "7860")
    monkeypatch.setenv("SYSTEM_PROMPT", "Be terse.")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/app")
    loaded = settings()
    assert loaded.port == 7860
    assert loaded.system_prompt == "Be terse."
    assert loaded.resolved_database_url == "postgresql+asyncpg://u:p@db:5432/app"


@pytest.mark.parametrize(
    ("url", "resolved"),
    [
        (None, "sqlite+aiosqlite:///state/ragstream.db"),
        ("sqlite:///other.db", "sqlite+aiosqlite:///other.db"),
        ("postgresql://h/db", "postgresql+asyncpg://h/db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
    ],
)
def test_database_urls_get_async_drivers(url: str | None, resolved: str) -> None:
    assert settings(database_url=url, data_dir="state").resolved_database_url == resolved


def test_the_provider_follows_the_keys_unless_named() -> None:
    assert settings().resolved_llm_provider == "local"
    assert settings(hf_token="hf_x").resolved_llm_provider == "huggingface"
    assert settings(hf_token="hf_x", llm_provider="local").resolved_llm_provider == "local"


def test_the_answer_budget_must_leave_room_for_a_prompt() -> None:
    with pytest.raises(ValidationError, match="smaller than LLM_CONTEXT_WINDOW"):
        settings(llm_context_window=1024, max_tokens_limit=1024)
    with pytest.raises(ValidationError, match="MAX_TOKENS_DEFAULT must not exceed"):
        settings(max_tokens_default=900, max_tokens_limit=800)


def test_env_example_lists_every_setting() -> None:
    import re
    from pathlib import Path

    example = (Path(__file__).parent.parent / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert listed == {name.upper() for name in Settings.model_fields}
