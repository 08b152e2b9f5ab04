from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from backend.api.deps import AnsweringUser, ChatServiceDep, CurrentUser, SessionDep, SettingsDep
from backend.api.errors import invalid_request
from backend.api.inputs import MAX_OFFSET
from backend.api.schemas import (
    ActiveBranch,
    BranchChoice,
    ConversationCreate,
    ConversationDetail,
    ConversationPublic,
    ConversationsPublic,
    ConversationUpdate,
    EditRequest,
    FeedbackIn,
    FeedbackPublic,
    RegenerateRequest,
    ReviseRequest,
)
from backend.api.sse import EventStream, sse_response
from backend.common.errors import NotFound
from backend.db import repository
from backend.db.models import Conversation
from backend.services.chat import owned_answer

router = APIRouter(prefix="/conversations", tags=["conversations"])


async def _owned(session: SessionDep, user: CurrentUser, conversation_id: str) -> Conversation:
    conversation = await repository.get_conversation(
        session=session, user_id=user.id, conversation_id=conversation_id, with_messages=True
    )
    if conversation is None:
        raise NotFound("conversation not found", field=("conversation_id",))
    return conversation


@router.get("", response_model=ConversationsPublic)
async def list_conversations(
    session: SessionDep,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
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
    branch = repository.active_branch(conversation.messages, conversation.active_message_id)
    detail.active_branch = [m.id for m in branch]
    return detail


@router.put("/{conversation_id}/branch", response_model=ActiveBranch)
async def choose_branch(
    conversation_id: str, body: BranchChoice, user: CurrentUser, service: ChatServiceDep
) -> ActiveBranch:
    """Make a message's thread the current one (down to its newest reply): what GET shows
    as `active_branch`, and what the next question, regenerate and the app continue."""
    branch = await service.choose_branch(
        user=user, conversation_id=conversation_id, message_id=body.message_id
    )
    return ActiveBranch(active_branch=[m.id for m in branch])


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
    user: AnsweringUser,
    service: ChatServiceDep,
    settings: SettingsDep,
    body: RegenerateRequest | None = None,
) -> EventStream:
    """A new answer to the current thread's last question, as SSE (the old answer stays as
    a sibling)."""
    options = (body or RegenerateRequest()).options()
    turn = await service.regenerate(user=user, conversation_id=conversation_id, options=options)
    return sse_response(service.stream(turn), settings)


messages_router = APIRouter(prefix="/messages", tags=["conversations"])

MAX_ANSWER_OFFSET = 10**9  # no answer is longer: a larger Last-Event-ID is not ours


@messages_router.post("/{message_id}/revise")
async def revise_answer(
    message_id: str,
    body: ReviseRequest,
    user: AnsweringUser,
    service: ChatServiceDep,
    settings: SettingsDep,
) -> EventStream:
    """A new answer written from this one and your feedback ("shorter, and say which
    year"), as SSE like regenerate: a sibling of it, from the same sources, with the
    feedback stored. Revising a revision carries the whole chain of answers and feedback."""
    turn = await service.revise(
        user=user, message_id=message_id, feedback=body.feedback, options=body.options()
    )
    return sse_response(service.stream(turn), settings)


@messages_router.post("/{message_id}/edit")
async def edit_question(
    message_id: str,
    body: EditRequest,
    user: AnsweringUser,
    service: ChatServiceDep,
    settings: SettingsDep,
) -> EventStream:
    """Ask a question again, edited: a new question beside it (a sibling branch from the
    same point; the old one and its answers stay) and its answer, as SSE like /chat/stream.
    The new branch becomes the current one."""
    turn = await service.edit(
        user=user, message_id=message_id, message=body.message, options=body.options()
    )
    return sse_response(service.stream(turn), settings)


@messages_router.post("/{message_id}/stop", status_code=status.HTTP_202_ACCEPTED)
async def stop_answer(
    message_id: str, user: CurrentUser, service: ChatServiceDep
) -> dict[str, str]:
    """Stop an answer being generated (one that was asked with `on_disconnect: finish`
    goes on without readers); its text so far is kept as `interrupted`. One that another
    worker or replica generates is stopped by it within STREAM_SAVE_SECONDS."""
    return {"status": await service.stop(user=user, message_id=message_id)}


@messages_router.get("/{message_id}/stream")
async def resume_stream(
    message_id: str,
    user: CurrentUser,
    service: ChatServiceDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None, Header(description="The id of the last event read.")
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ANSWER_OFFSET, description="Characters read (or Last-Event-ID)."),
    ] = None,
) -> EventStream:
    """Resume an answer's stream after the last event read: its `meta` and `sources`
    again, the text that followed as one `token` event, then live events if it is still
    being generated (on this replica or another), and its last event."""
    position = after or 0
    if last_event_id is not None and after is None:
        if not last_event_id.isdigit() or int(last_event_id) > MAX_ANSWER_OFFSET:
            raise invalid_request(
                ("header", "last-event-id"),
                "Last-Event-ID must be the id of an event of this answer (a number)",
            )
        position = int(last_event_id)
    events = await service.resume(user=user, message_id=message_id, after=position)
    return sse_response(events, settings)


@messages_router.post(
    "/{message_id}/feedback", status_code=status.HTTP_201_CREATED, response_model=FeedbackPublic
)
async def give_feedback(
    message_id: str, body: FeedbackIn, session: SessionDep, user: CurrentUser
) -> FeedbackPublic:
    """Rate an answer (1 or -1) with an optional comment; sending again replaces it."""
    message = await owned_answer(session, user, message_id, only_answers="can be rated")
    feedback = await repository.set_feedback(
        session=session, message=message, rating=body.rating, comment=body.comment
    )
    await session.commit()
    return FeedbackPublic.model_validate(feedback)
