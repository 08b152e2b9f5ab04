"""All settings of the backend, read from the environment and `.env` (see `.env.example`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY = "development-only-secret-key-change-me"

DEFAULT_SYSTEM_PROMPT = (
    "You are ragstream, a helpful assistant. Answer clearly and concisely. "
    "If you do not know the answer, say so instead of guessing."
)


class Settings(BaseSettings):
    """The one validated settings object; reach it through `get_settings()`."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    # --- serving -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `python -m backend` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m backend` listens on.")
    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses the default SECRET_KEY."
    )
    log_level: str = Field("info", description="Log level of the backend (debug, info, warning).")
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list); empty: none."
    )

    # --- state -----------------------------------------------------------------------------
    data_dir: Path = Field(
        Path("./data"),
        description="Where the SQLite file, the embedded store and other state live.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the history store; default: SQLite file in DATA_DIR. "
        "`postgresql://...` URLs use the asyncpg driver.",
    )

    # --- auth --------------------------------------------------------------------------------
    secret_key: str = Field(DEFAULT_SECRET_KEY, description="JWT signing key.")
    access_token_minutes: int = Field(
        60 * 24, ge=1, description="Lifetime of an access token, in minutes."
    )

    # --- chat model ------------------------------------------------------------------------
    llm_provider: Literal["local", "huggingface", "openai-compatible"] | None = Field(
        None, description="`huggingface` when HF_TOKEN is set, else `local` (bundled SmolLM2)."
    )
    llm_model: str | None = Field(
        None, description="Model id; for `local`, a path to a GGUF file (default: bundled SmolLM2)."
    )
    llm_base_url: str | None = Field(None, description="Endpoint URL of a remote model server.")
    llm_api_key: str | None = Field(None, description="Key for an openai-compatible provider.")
    hf_token: str | None = Field(None, description="Hugging Face token (production model).")
    llm_context_window: int = Field(
        4096, ge=256, description="Tokens the model sees at once (prompt + answer)."
    )
    llm_threads: int | None = Field(
        None, ge=1, description="CPU threads of the local model; default: all cores."
    )
    llm_cpu_extra_buffers: bool = Field(
        False,
        description="Let llama.cpp use repacked/AMX weight buffers (faster on some CPUs, "
        "crashes on some virtual machines).",
    )
    max_tokens_default: int = Field(
        512, ge=1, description="Answer budget in tokens when a request names none."
    )
    max_tokens_limit: int = Field(
        2048, ge=1, description="Largest answer budget a request may ask for."
    )
    temperature_default: float = Field(0.7, ge=0.0, le=2.0, description="Default temperature.")

    # --- prompt ------------------------------------------------------------------------------
    system_prompt: str = Field(
        DEFAULT_SYSTEM_PROMPT, description="System instruction at the head of every prompt."
    )
    max_message_chars: int = Field(
        16_000, ge=1, description="Longest user message accepted, in characters."
    )

    # --- retrieval ---------------------------------------------------------------------------
    vector_store: Literal["embedded", "pinecone"] | None = Field(
        None, description="`pinecone` when PINECONE_API_KEY is set, else `embedded`."
    )
    pinecone_api_key: str | None = Field(None, description="Pinecone API key.")
    pinecone_index: str | None = Field(
        None, description="Pinecone index name (its host is looked up) when PINECONE_HOST is unset."
    )
    pinecone_host: str | None = Field(
        None, description="Pinecone index host URL (skips the lookup by name)."
    )
    embedding_model: str | None = Field(
        None,
        description="Folder of a sentence-transformers model; default: bundled all-MiniLM-L6-v2.",
    )
    embedding_batch_size: int = Field(32, ge=1, description="Chunks embedded per batch.")
    chunk_size: int = Field(800, ge=100, description="Largest chunk, in characters.")
    chunk_overlap: int = Field(120, ge=0, description="Characters neighbouring chunks share.")
    retrieval_top_k: int = Field(5, ge=1, le=50, description="Passages per search by default.")
    retrieval_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Default dense/keyword mix (0 keyword only, 1 dense only)."
    )
    retrieval_fusion: Literal["minmax", "convex"] = Field(
        "convex", description="How dense and keyword scores are fused (see docs/retrieval.md)."
    )
    retrieval_candidates: int = Field(
        100, ge=10, le=1000, description="Candidates per side before min-max fusion."
    )
    context_share: float = Field(
        0.6, gt=0.0, le=1.0, description="Share of the prompt budget sources may fill."
    )
    publishers: list[str] = Field(
        default_factory=list,
        description="Usernames allowed to publish to the shared namespace (JSON list).",
    )
    max_documents_per_request: int = Field(500, ge=1, description="Documents per ingest request.")
    max_document_chars: int = Field(
        2_000_000, ge=1, description="Longest document accepted, in characters."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest file upload.")
    upsert_batch_size: int = Field(
        200, ge=1, le=1000, description="Records per vector-store write (Pinecone: <= 1000, 2 MB)."
    )
    bm25_refresh_seconds: float = Field(
        5.0, ge=0.0, description="How often a replica checks for BM25 statistics others changed."
    )

    # --- streaming -----------------------------------------------------------------------
    sse_ping_seconds: int = Field(
        15, ge=1, description="Keep-alive comment interval on idle SSE streams."
    )

    # --- frontend ----------------------------------------------------------------------------
    backend_url: str = Field(
        "http://127.0.0.1:8000", description="Where the Streamlit app finds the backend."
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.environment != "development" and self.secret_key == DEFAULT_SECRET_KEY:
            raise ValueError(
                "SECRET_KEY is the built-in development key; set SECRET_KEY to a long random "
                "string (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) "
                "or set ENVIRONMENT=development."
            )
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("MAX_TOKENS_DEFAULT must not exceed MAX_TOKENS_LIMIT.")
        if self.max_tokens_limit >= self.llm_context_window:
            raise ValueError(
                "MAX_TOKENS_LIMIT must be smaller than LLM_CONTEXT_WINDOW so a prompt still fits."
            )
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE.")
        if self.resolved_vector_store == "pinecone" and not (
            self.pinecone_api_key and (self.pinecone_host or self.pinecone_index)
        ):
            raise ValueError(
                "VECTOR_STORE=pinecone needs PINECONE_API_KEY and PINECONE_INDEX "
                "(or PINECONE_HOST)."
            )
        return self

    @property
    def resolved_llm_provider(self) -> str:
        if self.llm_provider:
            return self.llm_provider
        return "huggingface" if self.hf_token else "local"

    @property
    def resolved_vector_store(self) -> str:
        if self.vector_store:
            return self.vector_store
        return "pinecone" if self.pinecone_api_key else "embedded"

    @property
    def resolved_database_url(self) -> str:
        from backend.db.engine import async_driver_url

        return async_driver_url(
            self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'ragstream.db'}"
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
