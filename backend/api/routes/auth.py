from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from backend.api.deps import (
    ClientAddress,
    CurrentUser,
    DocumentsDep,
    LimitsDep,
    SessionDep,
    SettingsDep,
    UserModelsDep,
)
from backend.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyPublic,
    ApiKeysPublic,
    Me,
    ModelKeyIn,
    ModelKeyPublic,
    Token,
    UserCreate,
    UserPublic,
)
from backend.common.errors import Conflict, Forbidden, NotAuthenticated, NotFound
from backend.common.settings import Settings
from backend.db import repository
from backend.db.models import User
from backend.services.model_keys import KeyInput
from backend.services.security import (
    create_access_token,
    hash_api_key,
    hash_password,
    new_api_key,
    verify_password,
)

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
async def register(
    user_in: UserCreate,
    session: SessionDep,
    settings: SettingsDep,
    limits: LimitsDep,
    address: ClientAddress,
) -> UserPublic:
    """Create an account (when REGISTRATION is open; LIMIT_REGISTRATIONS per address)."""
    if settings.registration == "closed":
        raise Forbidden(
            "registration is closed; the operator creates accounts "
            "(python -m backend.cli users add)"
        )
    if settings.registration == "oidc":
        raise Forbidden(
            "accounts are created by signing in with the sign-in provider "
            "(GET /auth/oidc/login), not with a password"
        )
    await limits.registration(address)
    if await repository.get_user_by_username(session=session, username=user_in.username):
        raise Conflict("username is already taken", field=("username",))
    user = await repository.create_user(
        session=session,
        username=user_in.username,
        password_hash=hash_password(user_in.password),
    )
    await session.commit()
    return UserPublic.model_validate(user)


@router.post("/token", response_model=Token)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: SessionDep,
    settings: SettingsDep,
    limits: LimitsDep,
    address: ClientAddress,
) -> Token:
    """Exchange username and password for a bearer token (OAuth2 password flow); after
    LIMIT_LOGIN_FAILURES for a username or an address, 429 until the window passes."""
    await limits.before_sign_in(form.username, address)
    user = await repository.get_user_by_username(session=session, username=form.username)
    if user is None or not verify_password(user.password_hash, form.password):
        await limits.sign_in_failed(form.username, address)
        raise NotAuthenticated("incorrect username or password")
    if not user.is_active:
        raise NotAuthenticated("this account is disabled")
    return bearer_token(user, settings)


def bearer_token(user: User, settings: Settings) -> Token:
    """This backend's own access token for `user` (signed in by password or provider)."""
    token = create_access_token(
        subject=user.id,
        secret_key=settings.secret_key.get_secret_value(),
        minutes=settings.access_token_minutes,
    )
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60)


@router.get("/me", response_model=Me)
async def me(user: CurrentUser, documents: DocumentsDep, settings: SettingsDep) -> Me:
    """The caller's account and what it may do: publish to the shared namespace, upload
    files up to a size."""
    return Me(
        **UserPublic.model_validate(user).model_dump(),
        can_publish=documents.can_publish(user),
        is_admin=user.is_admin,
        max_upload_bytes=settings.max_upload_bytes,
    )


@router.put("/me/model-key", response_model=ModelKeyPublic)
async def save_model_key(
    body: ModelKeyIn, user: CurrentUser, user_models: UserModelsDep
) -> ModelKeyPublic:
    """Save your own model key (replacing any): your chats then run on it, outside the
    service's token quota. Its base URL must reach a public address (or one the operator
    allow-listed) and its server must not refuse the key. The key is shown masked from now
    on."""
    row = await user_models.save(
        user,
        KeyInput(
            provider=body.provider, api_key=body.api_key, base_url=body.base_url, model=body.model
        ),
    )
    return ModelKeyPublic.model_validate(row)


@router.get("/me/model-key", response_model=ModelKeyPublic)
async def get_model_key(user: CurrentUser, user_models: UserModelsDep) -> ModelKeyPublic:
    """Your model key, masked."""
    row = await user_models.stored(user)
    if row is None:
        raise NotFound("you have no model key saved")
    return ModelKeyPublic.model_validate(row)


@router.delete("/me/model-key", status_code=status.HTTP_204_NO_CONTENT)
async def delete_model_key(user: CurrentUser, user_models: UserModelsDep) -> Response:
    """Forget your model key: your chats run on the service's models again."""
    if not await user_models.delete(user):
        raise NotFound("you have no model key saved")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(
    body: ApiKeyCreate, user: CurrentUser, session: SessionDep
) -> ApiKeyCreated:
    """Create an API key; the key is in this answer only."""
    key = new_api_key()
    row = await repository.create_api_key(
        session=session,
        user_id=user.id,
        name=body.name,
        prefix=key[:10],
        key_hash=hash_api_key(key),
    )
    await session.commit()
    return ApiKeyCreated(**ApiKeyPublic.model_validate(row).model_dump(), key=key)


@router.get("/api-keys", response_model=ApiKeysPublic)
async def list_api_keys(user: CurrentUser, session: SessionDep) -> ApiKeysPublic:
    """Your API keys (never the keys themselves)."""
    keys = await repository.list_api_keys(session=session, user_id=user.id)
    return ApiKeysPublic(data=[ApiKeyPublic.model_validate(k) for k in keys])


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(key_id: str, user: CurrentUser, session: SessionDep) -> Response:
    """Revoke one of your API keys."""
    key = await repository.get_api_key(session=session, user_id=user.id, key_id=key_id)
    if key is None:
        raise NotFound("API key not found", field=("key_id",))
    await session.delete(key)
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
