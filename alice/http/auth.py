"""API keys: `Authorization: Bearer KEY` or `X-Api-Key: KEY` on every route but the open ones.

The key a request came with is its caller (`current_caller()`): its name goes on the jobs and
images it makes, and its role says what it may see and do. Roles are on once ALICE_ADMIN_KEYS
names an admin key: then the other keys are users, who see only their own work and cannot
manage models. Without admin keys every key does everything, as one household's server does.
"""

from __future__ import annotations

import contextvars
import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from alice.config import ApiKey, Settings
from alice.http.errors import ApiError
from alice.http.rate_limits import RateLimiter

logger = logging.getLogger("alice.auth")

# Open by contract: SAM polls /health and fetches image URLs with no key, probes and
# Prometheus scrape without one. Image names are unguessable capability URLs.
OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", "/healthz", "/metrics", "/web"})
OPEN_PREFIXES = ("/images/", "/web/")  # the web page's own files; it sends the key on its API calls


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def presented_key(headers: Headers) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


def key_matches(presented: str, keys: list[str]) -> bool:
    """Constant-time against every key, so timing tells neither which key nor how much matched."""
    candidate = presented.encode()
    matches = [hmac.compare_digest(candidate, key.encode()) for key in keys]
    return any(matches)


def matching_key(presented: str, keys: list[ApiKey]) -> ApiKey | None:
    """The configured key presented, compared in constant time against every key (as key_matches)."""
    candidate = presented.encode()
    matches = [hmac.compare_digest(candidate, key.secret.encode()) for key in keys]
    return next((key for key, matched in zip(keys, matches) if matched), None)


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: `name` is its key's (None on a server without keys); `admin`
    manages models and sees every key's work; `roles` says whether roles are on at all."""

    name: str | None
    admin: bool = True
    roles: bool = False

    @property
    def role(self) -> str:
        return "admin" if self.admin else "user"

    @property
    def owner_filter(self) -> str | None:
        """Whose jobs and images this caller sees: None for all (an admin), else its own."""
        return None if self.admin else self.name

    def sees(self, owner: str | None) -> bool:
        return self.admin or owner == self.name


HOUSEHOLD = Caller(None)
"""A request on a server without keys: it may do everything, as every key may without roles."""

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("alice_caller", default=HOUSEHOLD)


def current_caller() -> Caller:
    """The caller of the request being handled (set by ApiKeyMiddleware; the context reaches
    the threads Starlette runs handlers on)."""
    return _caller.get()


def admin_only() -> None:
    """A route dependency: with roles on, only an admin key may (403 naming the role otherwise)."""
    caller = current_caller()
    if not caller.admin:
        raise ApiError(403, f"this needs an admin key (ALICE_ADMIN_KEYS); key '{caller.name}' has the role "
                            f"'{caller.role}'", code="admin_only")


class ApiKeyMiddleware:
    """Refuses requests without a configured key with a 401 in the OpenAI envelope; names the
    caller of the others, and holds each key to ALICE_RATE_LIMIT."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        """`settings`: the server's, asked for when BentoML builds the app's middleware (in the
        worker process, before the service instance starts); a bad one raises ConfigError there."""
        self.app = app
        self.settings = settings
        self._read(settings())

    def _read(self, current: Settings) -> None:
        self._current = current
        self.keys = current.keyring()
        self.roles = any(key.admin for key in self.keys)
        self.limiter = RateLimiter(current.rate_budget())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (current := self.settings()) is not self._current:  # another start in this process (tests)
            self._read(current)
        if scope["type"] != "http" or not self.keys or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = presented_key(Headers(scope=scope))
        key = matching_key(presented, self.keys) if presented else None
        if key is not None:
            caller = Caller(key.name, admin=key.admin or not self.roles, roles=self.roles)
            if scope["method"] not in ("GET", "HEAD", "OPTIONS") and (wait_s := self.limiter.wait_s(key.name)):
                error = ApiError(429, f"key '{key.name}' made more than ALICE_RATE_LIMIT requests; try again in "
                                      f"{wait_s} s", code="rate_limit_exceeded", retry_after_s=wait_s)
                await error.openai_response()(scope, receive, send)
                return
            token = _caller.set(caller)
            try:
                await self.app(scope, receive, send)
            finally:
                _caller.reset(token)
            return
        # Never a hint of which part failed: missing and wrong keys get the same answer.
        error = ApiError(401, "a valid API key is required (Authorization: Bearer KEY or X-Api-Key: KEY)",
                         code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.openai_response()(scope, receive, send)


def warn_if_open_beyond_loopback(keys: list[str], addresses: list[str] | None = None, *, tls: bool = False,
                                 admins: int = 0) -> None:
    """No key, or keys over plain HTTP, are fine on one's own machine; on a network anyone could
    use the GPU, or read the keys and prompts off the Wi-Fi, so say so.

    `addresses` defaults to those this process really listens on: a BentoML worker inherits
    its listening socket, and BentoML's configured host stays 0.0.0.0 whatever `--host` says.
    """
    if keys:
        logger.info("API keys required (%d configured%s)", len(keys), f", {admins} admin" if admins else "")
    exposed = ", ".join(sorted({address for address in (listening_addresses() if addresses is None else addresses)
                                if not is_loopback(address)}))
    if not exposed:
        return
    if not keys:
        logger.warning(
            "no API key is configured and the server listens on %s: anyone who can reach it can use it; "
            "set ALICE_API_KEYS", exposed,
        )
    elif not tls:
        logger.warning(
            "API keys, prompts and images travel in clear text: the server speaks plain HTTP on %s; "
            "serve HTTPS (ALICE_TLS_CERTFILE and ALICE_TLS_KEYFILE; `alice tls init` makes them for a LAN) "
            "unless a TLS proxy in front is the only way in", exposed,
        )


def listening_addresses() -> list[str]:
    """The IP addresses this process accepts connections on; BentoML's configured host if none."""
    import psutil

    listening = [connection.laddr.ip for connection in psutil.Process().net_connections(kind="inet")
                 if connection.status == psutil.CONN_LISTEN]
    if listening:
        return listening
    from bentoml._internal.configuration.containers import BentoMLContainer  # where it would listen

    return [str(BentoMLContainer.http.host.get())]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
