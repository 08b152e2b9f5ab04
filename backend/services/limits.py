"""The limits a public deployment needs, on the `limits` library: counters in memory by
default, in Redis when REDIS_URL is set, so that every replica shares them.

- failed sign-ins, per username and per client address (LIMIT_LOGIN_FAILURES);
- accounts created per client address (LIMIT_REGISTRATIONS);
- chat, search and ingestion requests per user (LIMIT_REQUESTS);
- answers being generated at once per user, streamed or not (LIMIT_STREAMS; counted by
  each replica's relay);
- tokens (prompt + answer) per user per UTC day (LIMIT_TOKENS_PER_DAY).

Each refusal is a `TooManyRequests` that says when to come back (`Retry-After`). Admins
(granted by the command line only) are held to none of the per-user limits."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from limits import RateLimitItem
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

from backend.common.errors import TooManyRequests
from backend.common.settings import Settings, parse_limit, reveal
from backend.db.models import User
from backend.services.answer import Answer, AnswerObserver


class PrunedMemoryStorage(MemoryStorage):
    """limits' memory storage, its clean-up at most once every `prune_seconds`.

    The library starts the clean-up (a task that visits every moving window, each through
    a worker thread) at every hit and every `incr` once the previous clean-up is done: under
    load, a task and a thread trip per user per request. The checks themselves ignore what
    has expired; the clean-up only frees its memory, so it need not run more often."""

    prune_seconds = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_prune = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # the library's private hook
        now = time.monotonic()
        if now >= self._next_prune:
            self._next_prune = now + self.prune_seconds
            await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def open_storage(settings: Settings) -> Storage:
    url = reveal(settings.redis_url)
    if not url:
        return PrunedMemoryStorage()
    scheme, rest = url.split("://", 1)
    return RedisStorage(f"async+{scheme}://{rest}", implementation="redispy")


class Limits:
    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        self.settings = settings
        self.storage = storage or open_storage(settings)
        self.window = MovingWindowRateLimiter(self.storage)
        self.login_failures = parse_limit(settings.limit_login_failures)
        self.registrations = parse_limit(settings.limit_registrations)
        self.requests = parse_limit(settings.limit_requests)

    async def _retry_after(self, item: RateLimitItem, *key: str) -> int:
        stats = await self.window.get_window_stats(item, *key)
        return math.ceil(stats.reset_time - time.time())

    async def _take(self, item: RateLimitItem, key: tuple[str, ...], refusal: str) -> None:
        if not await self.window.hit(item, *key):
            wait = await self._retry_after(item, *key)
            raise TooManyRequests(f"{refusal}; try again in {wait} s", retry_after=wait)

    # --- signing in and up ---------------------------------------------------------------
    async def before_sign_in(self, username: str, address: str) -> None:
        """Refuse to even check a password once either key failed too often."""
        for key, who in (
            (("login-user", username), "username"),
            (("login-ip", address), "address"),
        ):
            if not await self.window.test(self.login_failures, *key):
                wait = await self._retry_after(self.login_failures, *key)
                raise TooManyRequests(
                    f"too many failed sign-ins for this {who}; try again in {wait} s",
                    retry_after=wait,
                )

    async def sign_in_failed(self, username: str, address: str) -> None:
        await self.window.hit(self.login_failures, "login-user", username)
        await self.window.hit(self.login_failures, "login-ip", address)

    async def registration(self, address: str) -> None:
        await self._take(
            self.registrations, ("register", address), "too many accounts created from here"
        )

    # --- using the service ---------------------------------------------------------------
    async def request(self, user: User) -> None:
        if not user.is_admin:
            await self._take(self.requests, ("requests", user.id), "too many requests")

    def streams(self, user: User, streaming: int) -> None:
        """Refuse another answer while `streaming` of the user's are under way."""
        if not user.is_admin and streaming >= self.settings.limit_streams:
            raise TooManyRequests(
                f"{streaming} of your answers are still streaming (the limit is "
                f"{self.settings.limit_streams}); wait for one to end or stop it",
                retry_after=5,
            )

    async def tokens_left(self, user: User) -> None:
        """Refuse an answer once the user spent the day's tokens."""
        if user.is_admin:
            return
        used = await self.storage.get(_day_key(user.id))
        if used >= self.settings.limit_tokens_per_day:
            reset, wait = _next_midnight()
            raise TooManyRequests(
                f"you used your {self.settings.limit_tokens_per_day} tokens for today; the "
                f"quota resets at {reset:%Y-%m-%d %H:%M} UTC",
                retry_after=wait,
                code="quota_exceeded",
            )

    async def spend_tokens(self, user_id: str, tokens: int) -> None:
        if tokens > 0:
            _, wait = _next_midnight()
            await self.storage.incr(_day_key(user_id), wait + 60, amount=tokens)


class TokenQuota(AnswerObserver):
    """Each ended answer's tokens (prompt + answer) spent from its user's day, whether or
    not the answer is stored."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def ended(self, answer: Answer) -> None:
        if answer.own_key:  # paid by the user's own key, not the operator's
            return
        spent = (answer.prompt_tokens or 0) + (answer.completion_tokens or 0)
        await self.limits.spend_tokens(answer.user_id, spent)


def _day_key(user_id: str) -> str:
    return f"tokens/{user_id}/{datetime.now(UTC):%Y-%m-%d}"


def _next_midnight() -> tuple[datetime, int]:
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight, math.ceil((midnight - now).total_seconds())
