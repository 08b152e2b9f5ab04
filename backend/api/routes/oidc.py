"""Sign-in with an OpenID Connect provider (Hugging Face on a Space, or Keycloak, Okta,
Entra, Google...), through Authlib: the authorization code flow with PKCE (S256), state and
nonce, the provider found from its discovery document.

`GET /auth/oidc/login?next=URL` answers 302 to the provider. What the callback needs to check
(Authlib's state data: state, nonce, code verifier, redirect URI; and `next`, and the account
to link) rides in a cookie signed with SECRET_KEY, scoped to /auth/oidc and valid for ten
minutes, so any worker or replica may take the callback, and only the browser that began a
sign-in can end it. `GET /auth/oidc/callback` exchanges the code, checks the ID token (its
signature, issuer, audience, nonce), asks for userinfo, finds or creates the account
(services/accounts.py), and answers 302 to `next` with `sign_in=<ticket>`: a one-time ticket
that `POST /auth/oidc/ticket` trades for this backend's own bearer token."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from authlib.integrations.base_client import OAuthError
from authlib.integrations.starlette_client import OAuth
from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from joserfc.errors import JoseError

from backend.api.deps import ComponentsDep, CurrentUser, SettingsDep
from backend.api.routes.auth import bearer_token
from backend.api.schemas import LinkStart, LinkUrl, SignInProvider, Ticket, Token
from backend.common.errors import InvalidInput, NotFound, SignInFailed, UpstreamFailed
from backend.common.settings import OidcConfig, Settings
from backend.services.accounts import Claims
from backend.services.model_keys import expiry

log = logging.getLogger(__name__)

router = APIRouter(prefix="/auth", tags=["auth"])

FLOW_COOKIE = "ragstream_oidc"
FLOW_PATH = "/auth/oidc"
FLOW_SECONDS = 600
LINK_SECONDS = 600
NOT_CONFIGURED = (
    "sign-in with an OpenID Connect provider is not configured (set OIDC_ISSUER and "
    "OIDC_CLIENT_ID, or hf_oauth: true on a Space)"
)


class OidcClient:
    """The provider, as Authlib's Starlette client (its metadata fetched on first use)."""

    def __init__(self, config: OidcConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.oauth = OAuth()
        kwargs: dict[str, Any] = {"scope": config.scopes, "code_challenge_method": "S256"}
        if transport is not None:
            kwargs["transport"] = transport
        if not config.client_secret:  # a public client: PKCE alone
            kwargs["token_endpoint_auth_method"] = "none"
        self.client = self.oauth.register(
            name="provider",
            client_id=config.client_id,
            client_secret=config.client_secret,
            server_metadata_url=config.discovery_url,
            client_kwargs=kwargs,
        )

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        """A new token response for `refresh_token` (users' sign-in tokens, scope
        inference-api)."""
        token = await self.client.fetch_access_token(
            grant_type="refresh_token", refresh_token=refresh_token
        )
        return dict(token)


def _flow_key(settings: Settings) -> str:
    return settings.secret_key.get_secret_value() + ":oidc-flow"


def _sign(settings: Settings, purpose: str, data: dict[str, Any], seconds: int) -> str:
    payload = {**data, "purpose": purpose, "exp": datetime.now(UTC) + timedelta(seconds=seconds)}
    return jwt.encode(payload, _flow_key(settings), algorithm="HS256")


def _read(settings: Settings, purpose: str, token: str, what: str) -> dict[str, Any]:
    try:
        data = jwt.decode(token, _flow_key(settings), algorithms=["HS256"])
    except jwt.ExpiredSignatureError:
        raise SignInFailed(f"{what} expired; start the sign-in again") from None
    except jwt.PyJWTError:
        raise SignInFailed(f"{what} is invalid; start the sign-in again") from None
    if data.get("purpose") != purpose:
        raise SignInFailed(f"{what} is invalid; start the sign-in again")
    return data


def _client(request: Request) -> OidcClient:
    client: OidcClient | None = getattr(request.app.state, "oidc", None)
    if client is None:
        raise NotFound(NOT_CONFIGURED)
    return client


def _redirect_uri(request: Request, config: OidcConfig) -> str:
    return config.redirect_url or str(request.url_for("oidc_callback"))


def checked_next(request: Request, settings: Settings, next_url: str) -> str:
    """Where a sign-in may return: a path here, or an origin the operator allowed."""
    if next_url.startswith("/") and not next_url.startswith("//") and "\\" not in next_url:
        return next_url
    parts = urlsplit(next_url)
    origin = f"{parts.scheme}://{parts.netloc}".lower()
    own = f"{request.url.scheme}://{request.url.netloc}".lower()
    allowed = {o.rstrip("/").lower() for o in [*settings.oidc_next_origins, *settings.cors_origins]}
    if parts.scheme not in ("http", "https") or origin not in allowed | {own}:
        raise InvalidInput(
            "next must be a path on this server or a URL on an origin in OIDC_NEXT_ORIGINS "
            "(or CORS_ORIGINS)",
            field=("next",),
        )
    return next_url


@router.get("/providers", response_model=SignInProvider)
async def providers(request: Request, settings: SettingsDep) -> SignInProvider:
    """How one may sign in here (no authentication needed): for the app's sign-in page."""
    client: OidcClient | None = getattr(request.app.state, "oidc", None)
    return SignInProvider(
        password=True,
        registration=settings.registration,
        oidc=client is not None,
        oidc_name=client.config.name if client else None,
        login_url=str(request.url_for("oidc_login")) if client else None,
        user_keys=settings.user_keys,
    )


@router.get("/oidc/login", name="oidc_login", status_code=302)
async def oidc_login(
    request: Request,
    settings: SettingsDep,
    next_url: str = Query(
        "/", alias="next", max_length=2000, description="Where to return after signing in."
    ),
    link: str | None = Query(None, max_length=2000, description="From POST /auth/oidc/link."),
) -> RedirectResponse:
    """Start signing in: 302 to the provider's authorization endpoint."""
    client = _client(request)
    target = checked_next(request, settings, next_url)
    link_to = _read(settings, "link", link, "the link")["sub"] if link else None
    session: dict[str, Any] = {}
    request.scope["session"] = session
    redirect_uri = _redirect_uri(request, client.config)
    try:
        response = await client.client.authorize_redirect(request, redirect_uri)
    except (httpx.HTTPError, OAuthError, ValueError, KeyError) as exc:
        log.warning("the OpenID Connect provider's discovery failed: %r", exc)
        raise UpstreamFailed(
            f"the sign-in provider ({client.config.name}) cannot be reached",
            code="oidc_unreachable",
        ) from None
    flow = _sign(
        settings, "flow", {"session": session, "next": target, "link": link_to}, FLOW_SECONDS
    )
    response.set_cookie(
        FLOW_COOKIE,
        flow,
        max_age=FLOW_SECONDS,
        path=FLOW_PATH,
        httponly=True,
        samesite="lax",
        secure=redirect_uri.startswith("https://"),
    )
    return response


@router.get("/oidc/callback", name="oidc_callback", status_code=302)
async def oidc_callback(
    request: Request, components: ComponentsDep, settings: SettingsDep
) -> RedirectResponse:
    """End signing in: the code exchanged and checked, the account found or created; 302
    to `next` with `sign_in=<one-time ticket>`."""
    client = _client(request)
    cookie = request.cookies.get(FLOW_COOKIE)
    if not cookie:
        raise SignInFailed(
            "this sign-in was not started in this browser (or took over ten minutes); "
            "start it again"
        )
    flow = _read(settings, "flow", cookie, "this sign-in")
    request.scope["session"] = flow["session"]
    try:
        token = await client.client.authorize_access_token(request)
        info = await client.client.userinfo(token=token)
    except (OAuthError, JoseError) as exc:
        error = getattr(exc, "error", None) or type(exc).__name__
        description = getattr(exc, "description", None) or str(exc)
        log.info("a sign-in failed: %s", error)
        raise SignInFailed(f"the sign-in failed ({error}: {description[:200]})") from None
    except httpx.HTTPError:
        raise UpstreamFailed(
            f"the sign-in provider ({client.config.name}) cannot be reached",
            code="oidc_unreachable",
        ) from None
    id_claims = token.get("userinfo") or {}
    if not id_claims or info.get("sub") != id_claims.get("sub"):
        raise SignInFailed("the provider's userinfo is not the ID token's person")
    claims = Claims.from_provider(str(id_claims["iss"]), {**info, **id_claims})
    user, ticket = await components.accounts.sign_in(claims, link_to=flow.get("link"))
    if "inference-api" in str(token.get("scope") or client.config.scopes).split():
        await components.user_models.save_sign_in_token(
            user.id,
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token"),
            expires_at=expiry(token),
        )
    target = flow["next"]
    joiner = "&" if "?" in target else "?"
    response = RedirectResponse(f"{target}{joiner}{urlencode({'sign_in': ticket})}", 302)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
    return response


@router.post("/oidc/ticket", response_model=Token)
async def oidc_ticket(body: Ticket, components: ComponentsDep, settings: SettingsDep) -> Token:
    """Trade the one-time ticket of a sign-in for a bearer token (once, within a minute)."""
    return bearer_token(await components.accounts.redeem(body.ticket), settings)


@router.post("/oidc/link", response_model=LinkUrl)
async def oidc_link(
    body: LinkStart, request: Request, user: CurrentUser, settings: SettingsDep
) -> LinkUrl:
    """A sign-in URL that links the provider's account to yours (open it within ten
    minutes); afterwards either way of signing in reaches this account."""
    _client(request)
    target = checked_next(request, settings, body.next)
    link = _sign(settings, "link", {"sub": user.id}, LINK_SECONDS)
    url = request.url_for("oidc_login").include_query_params(next=target, link=link)
    return LinkUrl(url=str(url))
