"""All settings of the backend, read from the environment and `.env` (see `.env.example`).

Secrets (the fields typed `SecretStr`) may also come from files, as Docker, Kubernetes and
Spaces mount them: `<NAME>_FILE` names the file, or a file called `<NAME>` (or `<name>`)
lies in SECRETS_DIR (`/run/secrets`). The environment wins, then `<NAME>_FILE`, then the
directory. A secret's value never appears in a repr, a log line or an error."""

from __future__ import annotations

import os
import socket
import sys
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo

if typing.TYPE_CHECKING:
    from limits import RateLimitItem
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

DEFAULT_SECRET_KEY = "development-only-secret-key-change-me"

DEFAULT_SYSTEM_PROMPT = (
    "You are ragstream, a helpful assistant. Answer clearly and concisely. "
    "If you do not know the answer, say so instead of guessing."
)


class ModelSpec(BaseModel):
    """One model the service may answer with."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, description="Name users see and choose; default: `model`.")
    provider: Literal["local", "huggingface", "openai-compatible"]
    model: str | None = Field(None, description="Repo id / model name / GGUF path.")
    base_url: str | None = Field(None, description="Endpoint URL (TGI, vLLM, Ollama, ...).")
    context_window: int | None = Field(None, ge=256)
    prompt: Literal["full", "compact"] | None = Field(
        None,
        description="`compact`: fewer, shorter sources in the question's message, the "
        "question restated after them, the last exchange only (for small models); default: "
        "compact for `local` models, full for the others.",
    )

    @property
    def name(self) -> str:
        if self.id:
            return self.id
        if self.provider == "local":
            return Path(self.model).stem if self.model else "SmolLM2-135M-Instruct"
        return self.model or self.base_url or self.provider


class OidcConfig(BaseModel):
    """The OpenID Connect provider users sign in with (Settings.resolved_oidc)."""

    issuer: str
    client_id: str
    client_secret: str | None = Field(None, repr=False)
    scopes: str
    name: str
    redirect_url: str | None

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"


def async_driver_url(url: str) -> str:
    """`url` with the async driver we ship; accepts the plain URLs hosting platforms hand out."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


class Settings(BaseSettings):
    """The one validated settings object; reach it through `get_settings()`."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, hide_input_in_errors=True
    )

    # --- serving -------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `python -m backend` listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m backend` listens on.")
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Worker processes of `python -m backend`; 0: one per core. They share "
        "the database, the stores and one local-model process.",
    )
    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses the default SECRET_KEY."
    )
    log_level: str = Field("info", description="Log level of the backend (debug, info, warning).")
    log_format: Literal["json", "text"] = Field(
        "json", description="`json`: one JSON object a line, with request ids; `text`: plain."
    )
    instance_name: str = Field(
        default_factory=socket.gethostname,
        description="Name of this replica, shown in `meta` events and logs; default: hostname.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list); empty: none."
    )

    # --- state -----------------------------------------------------------------------------
    data_dir: Path = Field(
        Path("./data"),
        description="Where the SQLite file, the embedded store and other state live.",
    )
    secrets_dir: Path = Field(
        Path("/run/secrets"),
        description="Folder of secret files, one per secret setting, named after it "
        "(Docker/Kubernetes secrets).",
    )
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the database; default: SQLite file in DATA_DIR. "
        "`postgresql://...` URLs use the asyncpg driver.",
    )

    # --- auth --------------------------------------------------------------------------------
    secret_key: SecretStr = Field(SecretStr(DEFAULT_SECRET_KEY), description="JWT signing key.")
    access_token_minutes: int = Field(
        60 * 24, ge=1, description="Lifetime of an access token, in minutes."
    )

    # --- OpenID Connect sign-in (docs/auth.md); on a Space, the Hub's OAUTH_* serve ----
    oidc_issuer: str | None = Field(
        None,
        description="Issuer URL of the OpenID Connect provider (its discovery document is "
        "ISSUER/.well-known/openid-configuration); default: OPENID_PROVIDER_URL (Spaces).",
    )
    oidc_client_id: str | None = Field(
        None, description="OIDC client id; default: OAUTH_CLIENT_ID (Spaces)."
    )
    oidc_client_secret: SecretStr | None = Field(
        None, description="OIDC client secret; default: OAUTH_CLIENT_SECRET (Spaces)."
    )
    oidc_scopes: str | None = Field(
        None,
        description="Scopes asked at sign-in; default: OAUTH_SCOPES (Spaces), else "
        "`openid profile email`. Hugging Face's `inference-api` lets a user's chats run on "
        "their own account.",
    )
    oidc_provider_name: str | None = Field(
        None,
        description="Name on the sign-in button; default: `Hugging Face` for huggingface.co, "
        "else the issuer's host.",
    )
    oidc_redirect_url: str | None = Field(
        None,
        description="The callback URL registered with the provider; default: "
        "https://SPACE_HOST/auth/oidc/callback on a Space, else this server's own URL.",
    )
    oidc_next_origins: list[str] = Field(
        default_factory=list,
        description="Origins (JSON list) a sign-in may return to (the chat app's URL); "
        "CORS_ORIGINS count too; a relative path always may.",
    )
    oidc_allowed_domains: list[str] = Field(
        default_factory=list,
        description="Verified email domains that may sign in (JSON list); empty: any.",
    )
    oidc_allowed_orgs: list[str] = Field(
        default_factory=list,
        description="Hugging Face organisations (or `groups` claim values) whose members may "
        "sign in (JSON list); empty: any. With OIDC_ALLOWED_DOMAINS, either admits.",
    )

    # --- users' own model keys (docs/auth.md) -------------------------------------------------
    user_keys: Literal["off", "allowed", "required"] = Field(
        "allowed",
        description="Users' own model keys: `off`, `allowed` (their chats then run on "
        "their key, outside the token quota), or `required` (no chat without one).",
    )
    keys_secret: SecretStr | None = Field(
        None,
        description="Encrypts users' model keys at rest; default: derived from SECRET_KEY.",
    )
    keys_secret_previous: SecretStr | None = Field(
        None,
        description="Earlier KEYS_SECRETs (comma-separated), still read after a rotation "
        "until `python -m backend.cli rotate-keys` re-encrypts every key.",
    )
    user_key_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts (`name`, `name:port`, IPs or CIDRs; JSON list) a user's base URL "
        "may reach although private, loopback or link-local (a model on the operator's "
        "network).",
    )

    # --- chat model ------------------------------------------------------------------------
    llm_provider: Literal["local", "huggingface", "openai-compatible"] | None = Field(
        None, description="`huggingface` when HF_TOKEN is set, else `local` (bundled SmolLM2)."
    )
    llm_model: str | None = Field(
        None, description="Model id; for `local`, a path to a GGUF file (default: bundled SmolLM2)."
    )
    llm_base_url: str | None = Field(None, description="Endpoint URL of a remote model server.")
    llm_api_key: SecretStr | None = Field(
        None, description="Key for an openai-compatible provider."
    )
    hf_token: SecretStr | None = Field(None, description="Hugging Face token (production model).")
    llm_models: list[ModelSpec] = Field(
        default_factory=list,
        description="Ordered models as a JSON list of {id, provider, model, base_url, "
        "context_window}; the first is the default, the rest serve in turn when one is "
        "unavailable. Empty: one model from LLM_PROVIDER / LLM_MODEL / LLM_BASE_URL.",
    )
    llm_route_short_model: str | None = Field(
        None, description="Model id that answers short questions (see LLM_ROUTE_SHORT_MAX_CHARS)."
    )
    llm_route_short_max_chars: int = Field(
        0, ge=0, description="Questions up to this many characters go to LLM_ROUTE_SHORT_MODEL."
    )
    llm_connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to a model.")
    llm_first_token_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for a model's first token."
    )
    llm_token_timeout: float = Field(
        30.0, gt=0, description="Seconds to wait between two tokens before giving up."
    )
    llm_max_retries: int = Field(
        3, ge=0, description="Retries before the first token (429, 503 loading, connection)."
    )
    llm_retry_base_seconds: float = Field(
        0.5, ge=0, description="First backoff; doubles each retry, with jitter."
    )
    llm_retry_max_wait_seconds: float = Field(
        20.0, ge=0, description="Ceiling on one wait, even when the provider asks for longer."
    )
    llm_context_window: int = Field(
        4096, ge=256, description="Tokens the model sees at once (prompt + answer)."
    )
    llm_threads: int | None = Field(
        None, ge=1, description="CPU threads of the local model; default: all cores."
    )
    llm_queue_max: int = Field(
        8,
        ge=0,
        description="Answers that may wait for the local model (it answers one at a time); "
        "past this, a chat is refused with 503 and Retry-After.",
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
    vector_store: Literal["embedded", "pinecone", "postgres"] | None = Field(
        None,
        description="`pinecone` when PINECONE_API_KEY is set, else `embedded`; `postgres` "
        "keeps vectors in PostgreSQL with pgvector (VECTOR_DATABASE_URL, else DATABASE_URL).",
    )
    vector_database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL of the pgvector store (VECTOR_STORE=postgres); default: "
        "DATABASE_URL.",
    )
    pgvector_exact_limit: int = Field(
        5_000,
        ge=0,
        description="Below this many candidates (namespace and filter) pgvector searches "
        "exactly; above it through its HNSW index.",
    )
    pgvector_ef_search: int = Field(
        200, ge=10, le=1000, description="HNSW candidate list size of the pgvector store."
    )
    pinecone_api_key: SecretStr | None = Field(None, description="Pinecone API key.")
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
    retrieval_group_by: Literal["document", "chunk"] = Field(
        "document",
        description="Results per document (its best passages merged) or per chunk.",
    )
    retrieval_passages_per_document: int = Field(
        2, ge=1, le=10, description="Passages of one document merged into its result."
    )
    retrieval_query: Literal["question", "context", "rewrite"] = Field(
        "context",
        description="What a follow-up question searches for: the `question` alone, the "
        "question with the conversation's earlier questions weighted in (`context`, no model "
        "call), or a standalone query the model writes (`rewrite`, falling back to `context`). "
        "A first question always searches for itself. See docs/retrieval.md.",
    )
    retrieval_context_weight: float = Field(
        0.7,
        ge=0.0,
        le=1.0,
        description="`context`: the weight of the previous question against the question's 1 "
        "(halved for each question further back).",
    )
    retrieval_context_turns: int = Field(
        2, ge=1, le=10, description="`context`, `rewrite`: earlier questions taken into account."
    )
    retrieval_rewrite_timeout: float = Field(
        4.0,
        gt=0.0,
        le=60.0,
        description="`rewrite`: seconds the model may take to write the query before the "
        "`context` way is used instead.",
    )
    retrieval_rewrite_max_tokens: int = Field(
        48, ge=8, le=256, description="`rewrite`: the longest query the model may write."
    )
    contextual_chunks: bool = Field(
        True,
        description="Encode each chunk with its document's title and headings "
        "(the stored passage stays the original text). Re-ingest after changing it.",
    )
    bm25_k1: float = Field(
        0.9, gt=0.0, le=10.0, description="BM25 term saturation (re-ingest after changing it)."
    )
    bm25_b: float = Field(
        0.4, ge=0.0, le=1.0, description="BM25 length normalisation (re-ingest after changing it)."
    )
    reranker_model: str | None = Field(
        None, description="Folder of a sentence-transformers cross-encoder; unset: no reranking."
    )
    rerank_candidates: int = Field(
        20, ge=1, le=200, description="Results the cross-encoder rescores."
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
        0.5, ge=0.0, description="How often a replica checks for BM25 statistics others changed."
    )

    # --- a public deployment: who may come in, and how much they may use ---------------
    api_docs: bool = Field(
        True, description="Serve the interactive docs (/docs, /redoc) and /openapi.json."
    )
    client_system_prompt: Literal["append", "replace"] = Field(
        "append",
        description="A /v1 client's system message: `append`ed after SYSTEM_PROMPT, or allowed "
        "to `replace` it.",
    )
    registration: Literal["open", "oidc", "closed"] = Field(
        "open",
        description="Who may create an account: `open` anyone (password form or OpenID "
        "Connect sign-in), `oidc` only by signing in with the OIDC provider, `closed` the "
        "operator only (`python -m backend.cli users add`).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description='Proxies (IPs or CIDRs, JSON list; ["*"]: any) whose X-Forwarded-For '
        "names the client; empty: the client is the socket's peer.",
    )
    redis_url: SecretStr | None = Field(
        None, description="Redis, so that every replica shares the limits' counters."
    )
    limit_login_failures: str = Field(
        "10/15 minutes",
        description="Failed sign-ins allowed per username and per client address.",
    )
    limit_registrations: str = Field(
        "5/hour", description="Accounts one client address may create."
    )
    limit_requests: str = Field(
        "60/minute", description="Chat, search and ingestion requests per user."
    )
    limit_streams: int = Field(
        4, ge=1, description="Answers one user may have generating at once, streamed or not."
    )
    limit_tokens_per_day: int = Field(
        200_000,
        ge=1,
        description="Tokens (prompt + answer) a user may spend per UTC day on the models.",
    )

    # --- streaming -----------------------------------------------------------------------
    sse_ping_seconds: int = Field(
        15, ge=1, description="Keep-alive comment interval on idle SSE streams."
    )
    stream_disconnect: Literal["stop", "finish"] = Field(
        "stop",
        description="What a reader's disconnect means when the request does not say: `stop` "
        "the answer, or let it `finish` (to be resumed).",
    )
    stream_save_seconds: float = Field(
        0.5,
        ge=0,
        le=1.0,
        description="How often a streaming answer's text is saved; 0: only when it ends "
        "(a crash then loses the answer).",
    )
    stream_stale_seconds: float = Field(
        10.0,
        gt=0,
        description="A streaming answer not saved for this long lost its writer (a crashed "
        "replica): it is marked interrupted, its text kept.",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        secret_key = self.secret_key.get_secret_value()
        if self.environment != "development" and secret_key == DEFAULT_SECRET_KEY:
            raise ValueError(
                "SECRET_KEY is the built-in development key; set SECRET_KEY to a long random "
                "string (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) "
                "or set ENVIRONMENT=development."
            )
        if self.environment != "development" and len(secret_key) < 32:
            raise ValueError(
                "SECRET_KEY is shorter than 32 characters; set a long random string "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)."
            )
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("MAX_TOKENS_DEFAULT must not exceed MAX_TOKENS_LIMIT.")
        if self.max_tokens_limit >= self.llm_context_window:
            raise ValueError(
                "MAX_TOKENS_LIMIT must be smaller than LLM_CONTEXT_WINDOW so a prompt still fits."
            )
        ids = [spec.name for spec in self.model_specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"LLM_MODELS ids must be unique (got {ids}).")
        if self.llm_route_short_model and self.llm_route_short_model not in ids:
            raise ValueError(
                f"LLM_ROUTE_SHORT_MODEL={self.llm_route_short_model!r} is not one of {ids}."
            )
        for spec in self.model_specs:
            if spec.provider == "openai-compatible" and not spec.base_url:
                raise ValueError(f"model {spec.name!r}: openai-compatible needs a base_url.")
            if spec.provider == "openai-compatible" and not spec.model:
                raise ValueError(f"model {spec.name!r}: openai-compatible needs a model name.")
        for name in ("limit_login_failures", "limit_registrations", "limit_requests"):
            try:
                parse_limit(getattr(self, name))
            except ValueError:
                raise ValueError(
                    f"{name.upper()} must read like '10/minute' or '5/15 minutes'"
                ) from None
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("CHUNK_OVERLAP must be smaller than CHUNK_SIZE.")
        if self.resolved_vector_store == "pinecone" and not (
            self.pinecone_api_key and (self.pinecone_host or self.pinecone_index)
        ):
            raise ValueError(
                "VECTOR_STORE=pinecone needs PINECONE_API_KEY and PINECONE_INDEX "
                "(or PINECONE_HOST)."
            )
        if self.resolved_vector_store == "postgres" and not self.resolved_vector_database_url:
            raise ValueError(
                "VECTOR_STORE=postgres needs a PostgreSQL VECTOR_DATABASE_URL or DATABASE_URL."
            )
        return self

    @property
    def resolved_oidc(self) -> OidcConfig | None:
        """The OpenID Connect provider, from OIDC_* or a Space's OAUTH_* variables."""
        env = os.environ
        issuer = self.oidc_issuer or env.get("OPENID_PROVIDER_URL")
        client_id = self.oidc_client_id or env.get("OAUTH_CLIENT_ID")
        if not issuer or not client_id:
            return None
        secret = reveal(self.oidc_client_secret) or env.get("OAUTH_CLIENT_SECRET") or None
        scopes = self.oidc_scopes or env.get("OAUTH_SCOPES") or "openid profile email"
        scope_list = scopes.replace(",", " ").split()
        if "openid" not in scope_list:
            scope_list.insert(0, "openid")
        issuer = issuer.rstrip("/")
        host = issuer.split("://", 1)[-1].split("/", 1)[0]
        name = self.oidc_provider_name or (
            "Hugging Face" if host.endswith("huggingface.co") else host
        )
        redirect = self.oidc_redirect_url
        if not redirect and env.get("SPACE_HOST"):
            redirect = f"https://{env['SPACE_HOST']}/auth/oidc/callback"
        return OidcConfig(
            issuer=issuer,
            client_id=client_id,
            client_secret=secret,
            scopes=" ".join(scope_list),
            name=name,
            redirect_url=redirect,
        )

    @property
    def model_specs(self) -> list[ModelSpec]:
        """The configured models, in fallback order."""
        if self.llm_models:
            return list(self.llm_models)
        provider = self.resolved_llm_provider
        model = self.llm_model
        if provider == "huggingface" and not model and not self.llm_base_url:
            model = "meta-llama/Meta-Llama-3-8B-Instruct"
        return [
            ModelSpec(
                provider=provider,
                model=model,
                base_url=self.llm_base_url,
                context_window=None,
            )
        ]

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
    def resolved_vector_database_url(self) -> str | None:
        """The pgvector store's PostgreSQL URL (asyncpg's form: `postgresql://...`), if any."""
        url = reveal(self.vector_database_url) or reveal(self.database_url)
        if not url:
            return None
        for prefix in ("postgres://", "postgresql://", "postgresql+asyncpg://"):
            if url.startswith(prefix):
                return "postgresql://" + url[len(prefix) :]
        return None

    @property
    def resolved_database_url(self) -> str:
        return async_driver_url(
            reveal(self.database_url) or f"sqlite+aiosqlite:///{self.data_dir / 'ragstream.db'}"
        )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, SecretFiles(settings_cls)


def reveal(secret: SecretStr | None) -> str | None:
    """The value of an optional secret, for the one place that hands it on."""
    return secret.get_secret_value() if secret is not None else None


def secret_settings(settings_cls: type[BaseModel] | None = None) -> list[str]:
    """Names of the secret settings: the fields typed `SecretStr`."""
    fields = (settings_cls or Settings).model_fields
    return [
        name
        for name, field in fields.items()
        if field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation)
    ]


class SecretFileError(RuntimeError):
    """A secret file that is named but cannot be read; the message names the file only."""


class SecretFiles(PydanticBaseSettingsSource):
    """Secret settings from files: `<NAME>_FILE`, else `<SECRETS_DIR>/<NAME>` (or `<name>`).

    Runs after the environment and `.env`, so a secret set there is never looked up."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything happens in __call__

    def __call__(self) -> dict[str, Any]:
        given = self.current_state  # what the environment and .env already set
        directory = Path(given.get("secrets_dir") or os.environ.get("SECRETS_DIR", "/run/secrets"))
        found: dict[str, Any] = {}
        for name in secret_settings(self.settings_cls):
            if given.get(name) is not None:
                continue
            variable = f"{name.upper()}_FILE"
            value = None
            if os.environ.get(variable):
                value = read_secret(Path(os.environ[variable]), variable)
            else:
                for candidate in (directory / name.upper(), directory / name):
                    if candidate.is_file():
                        value = read_secret(candidate, "SECRETS_DIR")
                        break
            if value:  # an empty file (compose's placeholder hf_token, say) sets nothing
                found[name] = value
        return found


def read_secret(path: Path, origin: str) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SecretFileError(f"{origin}: cannot read the secret file {path} ({reason})") from None


def parse_limit(text: str) -> RateLimitItem:
    from limits import parse

    return parse(text)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_or_exit() -> Settings:
    """The settings, or exit 2 with the reason on stderr (a file's name, never a secret)."""
    try:
        return get_settings()
    except (ValidationError, SecretFileError) as exc:
        print(f"ragstream: invalid settings:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
