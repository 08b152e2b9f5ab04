"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    field_validator,
)
from pydantic_core import PydanticCustomError

from backend.llm.own_key import own_model_id
from backend.retrieval.filters import FilterError, validate_filter
from backend.services.answer import Answer
from backend.services.ingestion import NewDocument
from backend.services.turns import ChatOptions, RetrievalOptions


def well_formed_filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A metadata filter in Pinecone's language, or a 422 naming its offending part."""
    if value is not None:
        try:
            validate_filter(value)
        except FilterError as exc:
            raise PydanticCustomError("filter", "{problem}", {"problem": str(exc)}) from exc
    return value


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=256)


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    created_at: datetime


class Me(UserPublic):
    """The caller, with what it may do."""

    can_publish: bool = Field(
        description="Whether this user may publish to the shared namespace (PUBLISHERS)."
    )
    max_upload_bytes: int = Field(description="Largest file /documents/upload accepts.")
    is_admin: bool = Field(description="Held to no per-user limit (granted by the operator).")


class ModelKeyIn(BaseModel):
    """A user's own model key: a Hugging Face token (the router, or `base_url` of an
    endpoint) or an OpenAI-compatible key with its `base_url` and `model`."""

    model_config = ConfigDict(extra="forbid")

    provider: Literal["huggingface", "openai-compatible"]
    api_key: str = Field(min_length=1, max_length=4096, pattern=r"^\S+$")
    base_url: str | None = Field(
        None, max_length=500, pattern=r"^https?://", description="http(s) URL of the server."
    )
    model: str | None = Field(None, min_length=1, max_length=200)


class ModelKeyPublic(BaseModel):
    """A saved model key, masked: the key itself is never shown again."""

    model_config = ConfigDict(from_attributes=True)

    provider: str
    hint: str = Field(description="The key, masked (`hf_…x9Yz`).")
    base_url: str | None
    model: str | None
    source: str = Field(description="`user`: saved by you; `sign-in`: your sign-in's token.")
    expires_at: datetime | None
    updated_at: datetime

    @computed_field(description="Its id in GET /models and /chat's `model`.")  # type: ignore[prop-decorator]
    @property
    def model_id(self) -> str:
        return own_model_id(self.provider, self.model, self.base_url)


class SignInProvider(BaseModel):
    """How users may sign in (GET /auth/providers, public)."""

    password: bool = Field(description="The username and password form.")
    registration: str = Field(description="REGISTRATION: open, oidc or closed.")
    oidc: bool = Field(description="Whether an OpenID Connect provider is configured.")
    oidc_name: str | None = Field(None, description="The provider's name, for the button.")
    login_url: str | None = Field(None, description="GET it (with ?next=) to sign in.")
    user_keys: str = Field(description="USER_KEYS: off, allowed or required.")


class Ticket(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ticket: str = Field(min_length=16, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")


class LinkStart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    next: str = Field("/", max_length=2000)


class LinkUrl(BaseModel):
    url: str = Field(description="Open it in the browser to link your account.")


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field("New conversation", min_length=1, max_length=200)


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)

    @field_validator("title")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("title must not be blank")
        return value.strip()


class ConversationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    title: str
    created_at: datetime
    updated_at: datetime


class ConversationsPublic(BaseModel):
    data: list[ConversationPublic]
    count: int


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: Literal[1, -1] = Field(description="1: good answer, -1: bad answer.")
    comment: str | None = Field(None, max_length=2000)


class FeedbackPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    rating: int
    comment: str | None
    created_at: datetime


class MessagePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    parent_id: str | None
    role: str
    content: str
    status: str
    model: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    timings: dict[str, Any] | None
    sources: list[dict[str, Any]] | None
    search_query: str | None = Field(
        None, description="What the sources were searched for (a follow-up's standalone query)."
    )
    revision_of: str | None = Field(None, description="The answer this one revises.")
    revision_feedback: str | None = Field(
        None, description="What the user asked to change in the answer it revises."
    )
    created_at: datetime
    feedback: FeedbackPublic | None = None

    @classmethod
    def of_answer(cls, answer: Answer) -> MessagePublic:
        """An answer that just ended, as its row now holds it."""
        return cls(
            id=answer.message_id,
            parent_id=answer.parent_id,
            role="assistant",
            content=answer.text,
            status=answer.status.value,
            model=answer.model,
            finish_reason=answer.finish_reason,
            prompt_tokens=answer.prompt_tokens,
            completion_tokens=answer.completion_tokens,
            timings=answer.timings,
            sources=answer.sources,
            search_query=answer.search_query,
            revision_of=answer.revision_of,
            revision_feedback=answer.revision_feedback,
            created_at=answer.created_at,
        )


class ConversationDetail(ConversationPublic):
    messages: list[MessagePublic] = Field(
        description="Every message, oldest first, branches included."
    )
    active_branch: list[str] = Field(
        default_factory=list,
        description="Ids of the current thread, oldest first: the chosen message's branch "
        "(PUT /conversations/{id}/branch) down to its newest reply, else the newest message's.",
    )


class BranchChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: str = Field(
        max_length=64,
        description="A message of the conversation: its thread (down to its newest reply) "
        "becomes the current one, which the next question continues.",
    )


class ActiveBranch(BaseModel):
    active_branch: list[str] = Field(description="Ids of the current thread, oldest first.")


class RetrievalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Search the documents for context.")
    namespaces: list[Literal["private", "shared"]] | None = Field(
        None, min_length=1, description="Where to search: your private documents, the shared ones."
    )
    filter: dict[str, Any] | None = Field(
        None, description="Pinecone-language metadata filter ($eq $in $gte $and ...)."
    )
    top_k: int | None = Field(None, ge=1, le=50, description="Passages to retrieve.")
    alpha: float | None = Field(
        None, ge=0.0, le=1.0, description="0 keyword only, 1 dense only; default: the setting."
    )
    group_by: Literal["document", "chunk"] | None = Field(
        None,
        description="`document`: one source per document (its best passages); "
        "default: the setting RETRIEVAL_GROUP_BY.",
    )
    query: Literal["question", "context", "rewrite"] | None = Field(
        None,
        description="What a follow-up searches for: the `question` alone, with the earlier "
        "questions weighted in (`context`), or the model's standalone `rewrite`; default: "
        "the setting RETRIEVAL_QUERY.",
    )
    rerank: bool | None = Field(
        None,
        description="Rescore the passages with the cross-encoder (when RERANKER_MODEL is "
        "set); default: yes, when it is.",
    )

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        # With retrieval off the filter is not used, nor judged.
        return well_formed_filter(value) if info.data.get("enabled", True) else value


class GenerationOptions(BaseModel):
    """How to answer: the options /chat, regenerate and /v1 share."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, max_length=200, description="A model from `GET /models`; default if absent."
    )
    max_tokens: int | None = Field(None, ge=1, description="Answer budget in tokens.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: list[str] | None = Field(
        None, max_length=4, description="Up to 4 sequences that end the answer."
    )
    retrieval: RetrievalRequest = Field(default_factory=RetrievalRequest)

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: list[str] | None) -> list[str] | None:
        if value and any(not s or len(s) > 64 for s in value):
            raise ValueError("stop sequences must be 1-64 characters")
        return value

    def options(self) -> ChatOptions:
        return ChatOptions(
            model=self.model,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            retrieval=RetrievalOptions(**self.retrieval.model_dump()),
        )


class StreamedOptions(GenerationOptions):
    on_disconnect: Literal["stop", "finish"] | None = Field(
        None,
        description="What a reader's disconnect means: `stop` the answer (its text so far is "
        "kept, `interrupted`) or let it `finish`, to be resumed with GET "
        "/messages/{id}/stream. Default: STREAM_DISCONNECT.",
    )

    def options(self) -> ChatOptions:
        return replace(super().options(), on_disconnect=self.on_disconnect)


class Question(StreamedOptions):
    message: str = Field(description="The user's message (not blank).")

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("message must not be empty")
        return value


class ChatRequest(Question):
    conversation_id: str | None = Field(
        None, max_length=64, description="Continue this conversation; new if absent."
    )


class RegenerateRequest(StreamedOptions):
    pass


MAX_FEEDBACK_CHARS = 2000


class ReviseRequest(StreamedOptions):
    feedback: str = Field(
        min_length=1,
        max_length=MAX_FEEDBACK_CHARS,
        description='What to change in the answer ("shorter, and say which year").',
    )

    @field_validator("feedback")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("feedback must not be blank")
        return value.strip()


class EditRequest(Question):
    """A question edited: `message` replaces it in a new branch."""


class ChatResponse(BaseModel):
    conversation_id: str
    message: MessagePublic
    sources: list[dict[str, Any]]
    search_query: str | None = Field(
        None, description="What the sources were searched for (a follow-up's standalone query)."
    )


class ModelInfo(BaseModel):
    id: str
    provider: str
    context_window: int
    default: bool
    own_key: bool = Field(False, description="Runs on the caller's own model key.")


class ModelsPublic(BaseModel):
    data: list[ModelInfo]


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Your id; re-sending it replaces the document.",
    )
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(None, max_length=500, description="Where it came from.")

    def to_domain(self) -> NewDocument:
        return NewDocument(text=self.text, id=self.id, metadata=self.metadata, source=self.source)


class DocumentsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn]
    namespace: Literal["private", "shared"] = "private"


class IngestedDocument(BaseModel):
    id: str
    namespace: Literal["private", "shared"]
    status: Literal["created", "updated", "unchanged"]
    chunks: int


class IngestResponse(BaseModel):
    documents: list[IngestedDocument]
    chunks: int


class DocumentPublic(BaseModel):
    id: str
    namespace: Literal["private", "shared"]
    source: str | None
    metadata: dict[str, Any]
    chunk_count: int
    char_count: int
    content_hash: str
    created_at: datetime
    updated_at: datetime


class DocumentsPublic(BaseModel):
    data: list[DocumentPublic]
    count: int


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=4000)
    namespaces: list[Literal["private", "shared"]] | None = Field(None, min_length=1)
    filter: dict[str, Any] | None = None
    top_k: int | None = Field(None, ge=1, le=100, description="Results (documents or chunks).")
    alpha: float | None = Field(None, ge=0.0, le=1.0)
    group_by: Literal["document", "chunk"] | None = Field(
        None,
        description="`document`: the best `top_k` documents, each with its best passages "
        "merged; `chunk`: the best `top_k` chunks; default: the setting RETRIEVAL_GROUP_BY.",
    )

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return well_formed_filter(value)


class SourcePublic(BaseModel):
    id: str
    document_id: str
    text: str
    score: float
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    results: list[SourcePublic]
    timings: dict[str, float]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("default", min_length=1, max_length=100)


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


class ApiKeyCreated(ApiKeyPublic):
    key: str = Field(description="The key itself: shown this once, stored only hashed.")


class ApiKeysPublic(BaseModel):
    data: list[ApiKeyPublic]
