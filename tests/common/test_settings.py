from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from backend.common.settings import (
    DEFAULT_SECRET_KEY,
    SecretFileError,
    Settings,
    reveal,
    secret_settings,
)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_default_secret_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY is the built-in development key"):
        settings(environment="production")
    assert reveal(settings(environment="production", secret_key="x" * 40).secret_key) == "x" * 40
    with pytest.raises(ValidationError, match="shorter than 32 characters"):
        settings(environment="production", secret_key="short")
    assert reveal(settings().secret_key) == DEFAULT_SECRET_KEY


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

    example = (Path(__file__).parents[2] / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert listed == {name.upper() for name in Settings.model_fields}


# --- secrets from files ----------------------------------------------------------------------
def test_every_secret_setting_is_typed_secret() -> None:
    assert set(secret_settings()) == {
        "database_url",
        "secret_key",
        "hf_token",
        "llm_api_key",
        "pinecone_api_key",
        "redis_url",
        "vector_database_url",
        "oidc_client_secret",
        "keys_secret",
        "keys_secret_previous",
    }


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "run-secrets"
    folder.mkdir()
    monkeypatch.setenv("SECRETS_DIR", str(folder))
    for name in secret_settings():
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(f"{name.upper()}_FILE", raising=False)
    return folder


def test_secrets_come_from_the_environment_then_name_file_then_the_folder(
    secrets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (secrets_dir / "HF_TOKEN").write_text("hf_from_folder\n")
    (secrets_dir / "llm_api_key").write_text("sk-lowercase-name\r\n")
    assert reveal(settings().hf_token) == "hf_from_folder"  # trailing newline dropped
    assert reveal(settings().llm_api_key) == "sk-lowercase-name"

    named = tmp_path / "token.txt"
    named.write_text("hf_from_named_file\n\n")
    monkeypatch.setenv("HF_TOKEN_FILE", str(named))
    assert reveal(settings().hf_token) == "hf_from_named_file"

    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert reveal(settings().hf_token) == "hf_from_env"
    assert reveal(settings().pinecone_api_key) is None  # nowhere: unset


def test_a_secret_file_sets_the_database_and_the_signing_key(
    secrets_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (secrets_dir / "database_url").write_text("postgresql://app:pw@db/app\n")
    (secrets_dir / "secret_key").write_text("k" * 40 + "\n")
    loaded = settings(environment="production")
    assert loaded.resolved_database_url == "postgresql+asyncpg://app:pw@db/app"
    assert loaded.secret_key.get_secret_value() == "k" * 40
    monkeypatch.setenv("SECRETS_DIR", str(secrets_dir / "elsewhere"))  # a folder that is not
    assert reveal(settings().database_url) is None


def test_an_empty_secret_file_is_no_secret(secrets_dir: Path) -> None:
    (secrets_dir / "hf_token").write_text("\n")  # compose mounts an empty hf_token by default
    assert settings().hf_token is None
    assert settings().resolved_llm_provider == "local"


@pytest.mark.parametrize("problem", ["missing", "a folder", "not text"])
def test_a_named_secret_file_that_cannot_be_read_stops_the_start(
    secrets_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    path = tmp_path / "secret-key"
    if problem == "a folder":
        path.mkdir()
    elif problem == "not text":
        path.write_bytes(b"\xff\xfe-k3y-" + b"\x80" * 40)
    monkeypatch.setenv("SECRET_KEY_FILE", str(path))
    with pytest.raises(SecretFileError) as caught:
        settings()
    assert str(path) in str(caught.value)
    assert "SECRET_KEY_FILE" in str(caught.value)
    assert "k3y" not in str(caught.value)


def test_secrets_never_show_in_reprs_or_errors(secrets_dir: Path) -> None:
    (secrets_dir / "hf_token").write_text("hf_do_not_print_me")
    loaded = settings()
    assert "hf_do_not_print_me" not in repr(loaded)
    assert "hf_do_not_print_me" not in str(loaded.model_dump())
    with pytest.raises(ValidationError) as caught:
        settings(environment="production", secret_key="short-but-secret")
    assert "short-but-secret" not in str(caught.value)
    assert "hf_do_not_print_me" not in str(caught.value)


def test_the_server_names_an_unreadable_secret_file_and_exits(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "hf_token"
    env = {**os.environ, "HF_TOKEN_FILE": str(missing), "DATA_DIR": str(tmp_path)}
    env.pop("HF_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "backend"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert f"HF_TOKEN_FILE: cannot read the secret file {missing}" in result.stderr
    assert "Traceback" not in result.stderr
