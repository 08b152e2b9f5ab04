"""Users' own model keys: kept encrypted, shown masked, turned into the model a user's
chats run on (USER_KEYS=off|allowed|required).

Keys are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, the `cryptography` library)
under a key derived by HKDF-SHA256 from KEYS_SECRET, else SECRET_KEY. Rotation: set the new
KEYS_SECRET, the old one in KEYS_SECRET_PREVIOUS (still read), run `python -m backend.cli
rotate-keys` (every key re-encrypted under the new one), then drop the old secret. A key
never leaves this module in clear except into the request to its own provider; it is in
no log line, error, metric or export (the API shows `hint`: `hf_…x9Yz`)."""

from __future__ import annotations

import base64
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from backend.common.errors import Forbidden, InvalidInput, UpstreamFailed
from backend.common.settings import Settings, reveal
from backend.db.models import ModelKey, User, utcnow
from backend.llm import ChatModel, ModelCatalog, UnknownModel
from backend.llm.guard import AddressRefused, GuardedTransport, HostPolicy, check_url
from backend.llm.guard import checked_addresses as guard_addresses
from backend.llm.own_key import OWN_PREFIX, OwnKey, OwnKeyModel, build_own_model

log = logging.getLogger(__name__)

PROVIDERS = ("huggingface", "openai-compatible")
KEY_REQUIRED = (
    "this service runs chats on your own model key (USER_KEYS=required): save one with "
    "PUT /auth/me/model-key"
)
CACHED_MODELS = 256  # users' models kept built (each holds its connections)
REFRESH_MARGIN = timedelta(seconds=60)

# A sign-in token's refresh: the refresh token -> the provider's new token response.
Refresher = Callable[[str], Awaitable[dict[str, Any]]]


def _fernet(secret: str) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=b"ragstream model keys", info=b"fernet v1"
    ).derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class KeyBox:
    """Encrypts under the current secret, reads under it or any previous one."""

    def __init__(self, settings: Settings) -> None:
        current = reveal(settings.keys_secret) or settings.secret_key.get_secret_value()
        previous = [s for s in (reveal(settings.keys_secret_previous) or "").split(",") if s]
        self.fernet = MultiFernet([_fernet(current), *(_fernet(s) for s in previous)])

    def seal(self, text: str) -> str:
        return self.fernet.encrypt(text.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self.fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise _unreadable() from None

    def rotate(self, token: str) -> str:
        try:
            return self.fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise _unreadable() from None


def _unreadable() -> UpstreamFailed:
    return UpstreamFailed(
        "your stored model key cannot be decrypted (the server's KEYS_SECRET changed); "
        "save it again",
        code="model_key_unreadable",
    )


def mask(key: str) -> str:
    """`hf_…x9Yz`: enough to tell keys apart, never enough to use one."""
    head = key[:3] if len(key) >= 16 else ""
    tail = key[-4:] if len(key) >= 12 else ""
    return f"{head}…{tail}"


@dataclass(frozen=True)
class KeyInput:
    provider: str
    api_key: str
    base_url: str | None = None
    model: str | None = None


class UserModels:
    """Each user's own model (their stored key), beside the operator's catalog."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        catalog: ModelCatalog | None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.catalog = catalog  # None: keys only (the command line's rotate-keys)
        self.box = KeyBox(settings)
        self.policy = HostPolicy(settings.user_key_allowed_hosts)
        self.refresher: Refresher | None = None  # set when OIDC sign-in is configured
        self._built: OrderedDict[str, tuple[datetime, OwnKeyModel]] = OrderedDict()

    @property
    def operators(self) -> ModelCatalog:
        """The operator's models."""
        assert self.catalog is not None, "built for the keys only"
        return self.catalog

    @property
    def enabled(self) -> bool:
        return self.settings.user_keys != "off"

    def _transport(self) -> GuardedTransport:
        return GuardedTransport(self.policy)

    # --- the stored key --------------------------------------------------------------
    async def stored(self, user: User) -> ModelKey | None:
        async with self.sessions() as session:
            return await session.get(ModelKey, user.id)

    async def save(self, user: User, given: KeyInput) -> ModelKey:
        """Check the key (its URL's addresses, a probe of its server), then store it."""
        if not self.enabled:
            raise Forbidden("this service does not take users' model keys (USER_KEYS=off)")
        key = await self.check(given)
        row = await self._store(
            user.id,
            keep_users=False,
            provider=key.provider,
            base_url=key.base_url,
            model=key.model,
            encrypted_key=self.box.seal(key.api_key),
            hint=key.hint,
            source="user",
            encrypted_refresh=None,
            expires_at=None,
        )
        assert row is not None
        log.info("user %s saved a %s model key", user.id, key.provider)
        return row

    async def _store(self, user_id: str, *, keep_users: bool, **fields: Any) -> ModelKey | None:
        """Write the user's one key row (created if need be) and forget the model built
        from the old one; `keep_users`: leave a key the user saved themselves (None)."""
        async with self.sessions() as session:
            row = await session.get(ModelKey, user_id)
            if row is not None and keep_users and row.source == "user":
                return None
            if row is None:
                row = ModelKey(user_id=user_id, created_at=utcnow())
                session.add(row)
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            await session.commit()
            await session.refresh(row)
        await self._forget(user_id)
        return row

    async def check(self, given: KeyInput) -> OwnKey:
        if given.provider not in PROVIDERS:
            raise InvalidInput(
                f"provider must be one of: {', '.join(PROVIDERS)}", field=("provider",)
            )
        api_key = given.api_key.strip()
        if not api_key or any(c.isspace() for c in api_key):
            raise InvalidInput("api_key must be a key without spaces", field=("api_key",))
        if given.provider == "openai-compatible" and not (given.base_url and given.model):
            raise InvalidInput(
                "an openai-compatible key needs its base_url and model", field=("base_url",)
            )
        if given.provider == "huggingface" and not given.base_url and not api_key.startswith("hf_"):
            raise InvalidInput(
                "a Hugging Face token starts with hf_ (or give the base_url of your endpoint)",
                field=("api_key",),
            )
        key = OwnKey(
            provider=given.provider,
            api_key=api_key,
            hint=mask(api_key),
            base_url=given.base_url.rstrip("/") if given.base_url else None,
            model=given.model or None,
        )
        if key.base_url:
            try:
                host, port = check_url(key.base_url)
                await guard_addresses(host, port, self.policy)
            except AddressRefused as exc:
                raise InvalidInput(
                    f"base_url is refused: {exc.reason}", field=("base_url",)
                ) from None
            await self._probe(key)
        return key

    async def _probe(self, key: OwnKey) -> None:
        """Ask the key's server for its models: a refused key or a redirect is a 422 now,
        not at the first chat. A server without the endpoint (404) is let through."""
        url = key.url.removesuffix("/chat/completions") + "/models"
        headers = {"Authorization": f"Bearer {key.api_key}"}
        try:
            async with httpx.AsyncClient(
                transport=self._transport(), timeout=self.settings.llm_connect_timeout + 5
            ) as http:
                response = await http.get(url, headers=headers)
        except AddressRefused as exc:
            raise InvalidInput(f"base_url is refused: {exc.reason}", field=("base_url",)) from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
            raise InvalidInput(
                f"the server at base_url cannot be reached ({type(exc).__name__})",
                field=("base_url",),
            ) from None
        if 300 <= response.status_code < 400:
            raise InvalidInput(
                f"the server at base_url answered with a redirect ({response.status_code}), "
                "which is not followed; give its final URL",
                field=("base_url",),
            )
        if response.status_code in (401, 403):
            raise InvalidInput(
                f"the server at base_url refused this key ({response.status_code})",
                field=("api_key",),
            )

    async def save_sign_in_token(
        self,
        user_id: str,
        *,
        access_token: str,
        refresh_token: str | None,
        expires_at: datetime | None,
    ) -> ModelKey | None:
        """The Hugging Face token of a sign-in (scope inference-api) as the user's key,
        unless the user saved one of their own (then None)."""
        if not self.enabled:
            return None
        return await self._store(
            user_id,
            keep_users=True,
            provider="huggingface",
            base_url=None,
            model=None,
            encrypted_key=self.box.seal(access_token),
            hint=mask(access_token),
            source="sign-in",
            encrypted_refresh=self.box.seal(refresh_token) if refresh_token else None,
            expires_at=expires_at,
        )

    async def delete(self, user: User) -> bool:
        async with self.sessions() as session:
            row = await session.get(ModelKey, user.id)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
        await self._forget(user.id)
        return True

    async def rotate_all(self) -> int:
        """Every stored key re-encrypted under the current KEYS_SECRET."""
        count = 0
        async with self.sessions() as session:
            for row in (await session.scalars(select(ModelKey))).all():
                row.encrypted_key = self.box.rotate(row.encrypted_key)
                if row.encrypted_refresh:
                    row.encrypted_refresh = self.box.rotate(row.encrypted_refresh)
                count += 1
            await session.commit()
        return count

    # --- the model it serves ----------------------------------------------------------
    async def model(self, user: User) -> OwnKeyModel | None:
        """The user's own model, built from their stored key (None: no key, or USER_KEYS
        off). A sign-in token near its expiry is refreshed first."""
        if not self.enabled:
            return None
        row = await self.stored(user)
        if row is None:
            await self._forget(user.id)
            return None
        if (
            row.source == "sign-in"
            and row.expires_at
            and row.expires_at - REFRESH_MARGIN < (datetime.now(UTC))
        ):
            row = await self._refresh(row)
        built = self._built.get(user.id)
        if built is not None and built[0] == row.updated_at:
            self._built.move_to_end(user.id)
            return built[1]
        key = OwnKey(
            provider=row.provider,
            api_key=self.box.open(row.encrypted_key),
            hint=row.hint,
            base_url=row.base_url,
            model=row.model,
        )
        model = build_own_model(key, self.settings, self._transport())
        await self._forget(user.id)
        self._built[user.id] = (row.updated_at, model)
        while len(self._built) > CACHED_MODELS:
            _, (_, old) = self._built.popitem(last=False)
            await old.aclose()
        return model

    async def _refresh(self, row: ModelKey) -> ModelKey:
        if not row.encrypted_refresh or self.refresher is None:
            raise UpstreamFailed(
                f"your Hugging Face sign-in token ({row.hint}) expired; sign in again",
                code="model_auth",
            )
        try:
            token = await self.refresher(self.box.open(row.encrypted_refresh))
        except Exception as exc:  # noqa: BLE001 - whatever failed, the user signs in again
            log.warning("refreshing user %s's sign-in token failed: %s", row.user_id, type(exc))
            raise UpstreamFailed(
                f"your Hugging Face sign-in token ({row.hint}) expired and could not be "
                "refreshed; sign in again",
                code="model_auth",
            ) from None
        fresh = await self.save_sign_in_token(
            row.user_id,
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token") or self.box.open(row.encrypted_refresh),
            expires_at=expiry(token),
        )
        return fresh or row  # None: the user saved a key of their own meanwhile

    async def _forget(self, user_id: str) -> None:
        built = self._built.pop(user_id, None)
        if built is not None:
            await built[1].aclose()

    async def choose(self, user: User, requested: str | None, question: str) -> list[ChatModel]:
        """The models for a turn: the user's own alone (no fallback to the operator's), or
        the operator's in their order. Their own is the default when they have one."""
        own = await self.model(user)
        if requested is not None and requested.startswith(OWN_PREFIX):
            if own is None or requested != own.name:
                raise UnknownModel(requested, self.ids(own))
            return [own]
        if requested is None and own is not None:
            return [own]
        if self.settings.user_keys == "required" and not user.is_admin:
            raise Forbidden(KEY_REQUIRED, code="model_key_required")
        return self.operators.choose(requested, question)

    async def available(self, user: User) -> list[ChatModel]:
        """The models the user may choose, their default first: their own (if any), then
        the operator's (unless USER_KEYS=required)."""
        own = await self.model(user)
        if self.settings.user_keys == "required" and not user.is_admin:
            return [own] if own else []
        return [*([own] if own else []), *self.operators.models]

    def ids(self, own: OwnKeyModel | None) -> list[str]:
        return [*([own.name] if own else []), *self.operators.ids()]

    async def aclose(self) -> None:
        for user_id in list(self._built):
            await self._forget(user_id)


def expiry(token: dict[str, Any]) -> datetime | None:
    """When a token response's access token expires."""
    if token.get("expires_at"):
        return datetime.fromtimestamp(float(token["expires_at"]), UTC)
    if token.get("expires_in"):
        return datetime.now(UTC) + timedelta(seconds=float(token["expires_in"]))
    return None
