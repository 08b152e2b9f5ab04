"""Accounts of people who sign in with an OpenID Connect provider.

An identity is (issuer, subject) and maps to one account, found by that pair only, never
by a username or an email someone could have registered first. The first sign-in creates
the account (REGISTRATION `open` or `oidc`; the allow-lists OIDC_ALLOWED_DOMAINS and
OIDC_ALLOWED_ORGS admit) under a free username derived from the claims (`alice`, else
`alice-2`, ...); a signed-in user may link an identity to their password account. Afterwards
the backend issues its own token, handed over through a one-time ticket."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.common.errors import Conflict, Forbidden, NotAuthenticated, SignInFailed
from backend.common.settings import Settings
from backend.db import repository
from backend.db.models import Identity, User, utcnow

log = logging.getLogger(__name__)

NO_PASSWORD = "!"  # an account made by signing in: no password verifies against it
TICKET_SECONDS = 60
USERNAME = re.compile(r"[^A-Za-z0-9_.@-]+")


@dataclass(frozen=True)
class Claims:
    """What the provider says of the person (ID token and userinfo)."""

    issuer: str
    subject: str
    username: str | None = None
    email: str | None = None
    email_verified: bool = False
    name: str | None = None
    orgs: tuple[str, ...] = field(default=())

    @classmethod
    def from_provider(cls, issuer: str, claims: Mapping[str, Any]) -> Claims:
        orgs: list[str] = []
        for entry in [*(claims.get("orgs") or []), *(claims.get("groups") or [])]:
            if isinstance(entry, str):
                orgs.append(entry)
            elif isinstance(entry, dict):
                orgs.extend(str(entry[k]) for k in ("preferred_username", "name") if entry.get(k))
        return cls(
            issuer=issuer,
            subject=str(claims["sub"]),
            username=claims.get("preferred_username") or claims.get("nickname"),
            email=claims.get("email"),
            email_verified=claims.get("email_verified") in (True, "true"),
            name=claims.get("name"),
            orgs=tuple(orgs),
        )


def _hash(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


class Accounts:
    def __init__(self, *, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions

    def admit(self, claims: Claims) -> None:
        """Refuse a person the allow-lists leave out (empty lists admit everyone)."""
        domains = [d.lower().lstrip("@") for d in self.settings.oidc_allowed_domains]
        orgs = {o.lower() for o in self.settings.oidc_allowed_orgs}
        if not domains and not orgs:
            return
        domain = (claims.email or "").rsplit("@", 1)[-1].lower() if claims.email else ""
        if domains and claims.email_verified and domain in domains:
            return
        if orgs and orgs & {o.lower() for o in claims.orgs}:
            return
        raise Forbidden(
            "this service admits only members of its allowed organisations or email "
            "domains, and your sign-in shows neither",
            code="not_allowed",
        )

    async def sign_in(self, claims: Claims, *, link_to: str | None = None) -> tuple[User, str]:
        """The account of this identity (created on its first sign-in, or linked to the
        account `link_to`), and a one-time ticket for its token."""
        self.admit(claims)
        async with self.sessions() as session:
            identity = await session.scalar(
                select(Identity).where(
                    Identity.issuer == claims.issuer, Identity.subject == claims.subject
                )
            )
            if link_to is not None:
                user = await self._link(session, identity, claims, link_to)
            elif identity is not None:
                found = await session.get(User, identity.user_id)
                assert found is not None  # the identity's account (deleted with it)
                user = found
            else:
                user = await self._create(session, claims)
            if identity is None:
                identity = Identity(user_id=user.id, issuer=claims.issuer, subject=claims.subject)
                session.add(identity)
            if not user.is_active:
                raise NotAuthenticated("this account is disabled")
            ticket = secrets.token_urlsafe(32)
            identity.email, identity.name = claims.email, claims.name
            identity.last_sign_in_at = utcnow()
            identity.ticket_hash = _hash(ticket)
            identity.ticket_expires_at = utcnow() + timedelta(seconds=TICKET_SECONDS)
            await session.commit()
            await session.refresh(user)
        return user, ticket

    async def _link(
        self, session: AsyncSession, identity: Identity | None, claims: Claims, user_id: str
    ) -> User:
        user = await session.get(User, user_id)
        if user is None:
            raise SignInFailed("the account to link no longer exists")
        if identity is not None and identity.user_id != user_id:
            raise Conflict(
                "this sign-in is already the account of someone else; sign in with it "
                "instead, or ask the operator to merge the accounts"
            )
        log.info("user %s linked a sign-in of %s", user_id, claims.issuer)
        return user

    async def _create(self, session: AsyncSession, claims: Claims) -> User:
        if self.settings.registration == "closed":
            raise Forbidden(
                "no account is linked to this sign-in and registration is closed: sign in "
                "with your password and link it, or ask the operator",
                code="registration_closed",
            )
        username = await self._free_username(session, claims)
        user = await repository.create_user(
            session=session, username=username, password_hash=NO_PASSWORD
        )
        log.info("user %s created by signing in with %s", user.id, claims.issuer)
        return user

    async def _free_username(self, session: AsyncSession, claims: Claims) -> str:
        """A username from the claims, that nobody has: `alice`, else `alice-2`, ..."""
        wanted = claims.username or (claims.email or "").split("@", 1)[0] or claims.name or ""
        base = USERNAME.sub("-", wanted).strip("-.")[:56] or "user"
        if len(base) < 3:
            base = f"{base}-user"
        for n in range(1, 50):
            candidate = base if n == 1 else f"{base}-{n}"
            if await repository.get_user_by_username(session=session, username=candidate) is None:
                return candidate
        return f"{base}-{secrets.token_hex(4)}"

    async def redeem(self, ticket: str) -> User:
        """The account a ticket was handed out for; each ticket serves once, for a minute."""
        async with self.sessions() as session:
            identity = await session.scalar(
                select(Identity).where(Identity.ticket_hash == _hash(ticket))
            )
            if identity is None or identity.ticket_expires_at is None:
                raise NotAuthenticated("this sign-in ticket is unknown or was used; sign in again")
            expired = identity.ticket_expires_at < datetime.now(UTC)
            identity.ticket_hash, identity.ticket_expires_at = None, None
            await session.commit()
            if expired:
                raise NotAuthenticated("this sign-in ticket expired; sign in again")
            user = await session.get(User, identity.user_id)
        if user is None or not user.is_active:
            raise NotAuthenticated("unknown or inactive user")
        return user

    async def issuers(self, user_id: str) -> list[str]:
        async with self.sessions() as session:
            rows = await session.scalars(select(Identity.issuer).where(Identity.user_id == user_id))
            return sorted(set(rows.all()))
