from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from sse_starlette import EventSourceResponse

from backend.api.deps import ChatServiceDep, CurrentUser, SessionDep, SettingsDep
from backend.api.sse import sse_response
from backend.db import repository
from backend.db.models import Conversation
from backend.errors import InvalidInput, NotFound
from backend.schemas import (
    ConversationCreate,
    ConversationDetail,
    ConversationPublic,
    ConversationsPublic,
    ConversationUpdate,
    FeedbackIn,
    FeedbackPublic,
    RegenerateRequest,
)

router = APIRouter(prefix="/conversations", tags=["conversations"])


async def _owned(session: SessionDep, user: CurrentUser, conversation_id: str) -> Conversation:
    conversation = await repository.get_conversation(
        session=session, user_id=user.id, conversation_id=conversation_id, with_messages=True
    )
    if conversation is None:
        raise NotFound("conversation not found", field=("path", "conversation_id"))
    return conversation


@router.get("", response_model=ConversationsPublic)
async def list_conversations(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ConversationsPublic:
    """The caller's conversations, most recently active first."""
    items, count = await repository.list_conversations(
        session=session, user_id=user.id, limit=limit, offset=offset
    )
    return ConversationsPublic(
        data=[ConversationPublic.model_validate(c) for c in items], count=count
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConversationPublic)
async def create_conversation(
    body: ConversationCreate, session: SessionDep, user: CurrentUser
) -> ConversationPublic:
    """Start an empty conversation."""
    conversation = await repository.create_conversation(
        session=session, user_id=user.id, title=body.title.strip() or "New conversation"
    )
    await session.commit()
    return ConversationPublic.model_validate(conversation)


@router.get("/{conversation_id}", response_model=ConversationDetail)
async def get_conversation(
    conversation_id: str, session: SessionDep, user: CurrentUser
) -> ConversationDetail:
    """One conversation with all its messages, oldest first, and its current thread."""
    conversation = await _owned(session, user, conversation_id)
    detail = ConversationDetail.model_validate(conversation)
    messages = conversation.messages
    detail.active_branch = [
        m.id for m in repository.branch_ending_at(messages, messages[-1].id if messages else None)
    ]
    return detail


@router.patch("/{conversation_id}", response_model=ConversationPublic)
async def rename_conversation(
    conversation_id: str, body: ConversationUpdate, session: SessionDep, user: CurrentUser
) -> ConversationPublic:
    """Rename a conversation."""
    conversation = await _owned(session, user, conversation_id)
    conversation.title = body.title
    await session.commit()
    return ConversationPublic.model_validate(conversation)


@router.delete("/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(
    conversation_id: str, session: SessionDep, user: CurrentUser
) -> Response:
    """Delete a conversation and its messages."""
    conversation = await _owned(session, user, conversation_id)
    await repository.delete_conversation(session=session, conversation=conversation)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{conversation_id}/regenerate")
async def regenerate(
    conversation_id: str,
    user: CurrentUser,
    service: ChatServiceDep,
    settings: SettingsDep,
    body: RegenerateRequest | None = None,
) -> EventSourceResponse:
    """A new answer to the last question, as SSE (the old answer stays as a sibling)."""
    body = body or RegenerateRequest()
    turn = await service.regenerate(
        user=user,
        conversation_id=conversation_id,
        options=body.options(),
    )
    return sse_response(service.answer(turn), settings)


messages_router = APIRouter(prefix="/messages", tags=["conversations"])


@messages_router.post(
    "/{message_id}/feedback", status_code=status.HTTP_201_CREATED, response_model=FeedbackPublic
)
async def give_feedback(
    message_id: str, body: FeedbackIn, session: SessionDep, user: CurrentUser
) -> FeedbackPublic:
    """Rate an answer (1 or -1) with an optional comment; sending again replaces it."""
    message = await repository.get_owned_message(
        session=session, user_id=user.id, message_id=message_id
    )
    if message is None:
        raise NotFound("message not found", field=("path", "message_id"))
    if message.role != "assistant":
        raise InvalidInput("only answers can be rated", field=("path", "message_id"))
    feedback = await repository.set_feedback(
        session=session, message=message, rating=body.rating, comment=body.comment
    )
    await session.commit()
    return FeedbackPublic.model_validate(feedback)
