"""FastAPI dependencies as `Annotated` aliases, so routes read as plain signatures.

Every one is `async def`, even those that never wait: FastAPI runs a plain `def`
dependency in a worker thread, a round trip between threads on every request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.ext.asyncio import AsyncSession

from backend.common.errors import Forbidden, NotAuthenticated
from backend.common.settings import Settings
from backend.db import repository
from backend.db.models import User
from backend.llm import ModelCatalog
from backend.services.chat import ChatService
from backend.services.components import Components
from backend.services.documents import DocumentService
from backend.services.limits import Limits
from backend.services.model_keys import UserModels
from backend.services.security import (
    API_KEY_PREFIX,
    InvalidToken,
    decode_access_token,
    hash_api_key,
)

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


async def get_components(request: Request) -> Components:
    return request.app.state.components


ComponentsDep = Annotated[Components, Depends(get_components)]


async def get_app_settings(components: ComponentsDep) -> Settings:
    return components.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(components: ComponentsDep) -> AsyncIterator[AsyncSession]:
    async with components.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_current_user(
    components: ComponentsDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> User:
    """The caller. Never in a dependency's session, which would stay open (holding a
    pooled connection) for as long as a streamed answer lasts: an API key's owner in a
    session of its own, a token's user through `components.users` (requests that arrive
    together are looked up in one query)."""
    settings = components.settings
    if not token:
        raise NotAuthenticated("not authenticated: send `Authorization: Bearer <token>`")
    if token.startswith(API_KEY_PREFIX):
        async with components.sessions() as session:
            found = await repository.api_key_owner(session=session, key_hash=hash_api_key(token))
            if found is None or not found[1].is_active:
                raise NotAuthenticated("invalid API key")
            if await repository.note_api_key_use(session=session, key=found[0]):
                await session.commit()
        return found[1]
    try:
        user_id = decode_access_token(token, secret_key=settings.secret_key.get_secret_value())
    except InvalidToken as exc:
        raise NotAuthenticated(f"{exc}; log in again") from exc
    user = await components.users.get(user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("unknown or inactive user; log in again")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def admin_user(user: CurrentUser) -> User:
    """The caller, who must be an admin (granted by `python -m backend.cli users add
    NAME --admin`)."""
    if not user.is_admin:
        raise Forbidden(
            "this needs an admin account (python -m backend.cli users add NAME --admin)"
        )
    return user


AdminUser = Annotated[User, Depends(admin_user)]


async def client_address(request: Request) -> str:
    """The client's address: the socket's peer, or what a TRUSTED_PROXIES proxy says."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]


async def limited_user(user: CurrentUser, components: ComponentsDep) -> User:
    """The caller, within LIMIT_REQUESTS (chat, search and ingestion)."""
    await components.limits.request(user)
    return user


LimitedUser = Annotated[User, Depends(limited_user)]


async def answering_user(user: LimitedUser, components: ComponentsDep) -> User:
    """The caller, who may start another answer: streams free (tokens left today, for an
    answer on the operator's models, is the chat service's check: services/chat.py)."""
    components.limits.streams(user, components.relay.running(user.id))
    return user


AnsweringUser = Annotated[User, Depends(answering_user)]


async def get_chat_service(components: ComponentsDep) -> ChatService:
    return components.chat_service


ChatServiceDep = Annotated[ChatService, Depends(get_chat_service)]


async def get_models(components: ComponentsDep) -> ModelCatalog:
    return components.models


ModelsDep = Annotated[ModelCatalog, Depends(get_models)]


async def get_user_models(components: ComponentsDep) -> UserModels:
    return components.user_models


UserModelsDep = Annotated[UserModels, Depends(get_user_models)]


async def get_documents(components: ComponentsDep) -> DocumentService:
    return components.documents


DocumentsDep = Annotated[DocumentService, Depends(get_documents)]


async def get_limits(components: ComponentsDep) -> Limits:
    return components.limits


LimitsDep = Annotated[Limits, Depends(get_limits)]


async def database_ok(components: ComponentsDep) -> bool:
    """Whether the database answers now (readiness)."""
    return await components.database_ok()


DatabaseOk = Annotated[bool, Depends(database_ok)]
