from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from backend.api.deps import CurrentUser, SessionDep, SettingsDep
from backend.db import repository
from backend.errors import Conflict, NotAuthenticated
from backend.schemas import Token, UserCreate, UserPublic
from backend.security import create_access_token, hash_password, verify_password

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/register", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
async def register(user_in: UserCreate, session: SessionDep) -> UserPublic:
    """Create an account."""
    if await repository.get_user_by_username(session=session, username=user_in.username):
        raise Conflict("username is already taken", field=("body", "username"))
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
) -> Token:
    """Exchange username and password for a bearer token (OAuth2 password flow)."""
    user = await repository.get_user_by_username(session=session, username=form.username)
    if user is None or not verify_password(user.password_hash, form.password):
        raise NotAuthenticated("incorrect username or password")
    token = create_access_token(
        subject=user.id, secret_key=settings.secret_key, minutes=settings.access_token_minutes
    )
    return Token(access_token=token, expires_in=settings.access_token_minutes * 60)


@router.get("/me", response_model=UserPublic)
async def me(user: CurrentUser) -> UserPublic:
    """The caller's account."""
    return UserPublic.model_validate(user)
