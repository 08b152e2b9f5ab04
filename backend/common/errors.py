"""Errors the services raise; `backend.api.errors` maps each kind to one HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `detail` is safe to show to the caller."""

    def __init__(
        self, detail: str, *, field: tuple[str | int, ...] | None = None, code: str | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.code = code  # a machine-readable reason, where there is one


class NotFound(ServiceError):
    """The thing does not exist, or belongs to someone else (never say which)."""


class InvalidInput(ServiceError):
    """The request is well-formed JSON but a value is unacceptable."""


class Conflict(ServiceError):
    """The request clashes with what is stored (e.g. a username that is taken)."""


class SignInFailed(ServiceError):
    """A sign-in with the OpenID Connect provider that cannot be completed (400)."""


class NotAuthenticated(ServiceError):
    """Missing, malformed, expired or unknown credentials."""


class UpstreamFailed(ServiceError):
    """A system we depend on (the model) failed while serving the request."""


class Forbidden(ServiceError):
    """The caller is known but may not do this."""


class RetryLater(ServiceError):
    """An error that says when to come back: `retry_after` seconds (the Retry-After
    header)."""

    def __init__(self, detail: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = max(1, retry_after)


class TooManyRequests(RetryLater):
    """A limit of the deployment is reached: `retry_after` seconds until it lets go."""


class PayloadTooLarge(ServiceError):
    """The request body or upload is larger than the operator allows."""


class Unavailable(ServiceError):
    """A system we depend on (the vector store) cannot be reached right now; try later."""


class Busy(Unavailable, RetryLater):
    """More work than can be served right now: `retry_after` seconds is a fair guess of
    when it can."""

    def __init__(self, detail: str, *, retry_after: int, code: str | None = "busy") -> None:
        super().__init__(detail, retry_after=retry_after, code=code)


class ModelBusy(Busy):
    """The local model's queue is full."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, retry_after=retry_after, code="model_busy")
