"""API keys: `Authorization: Bearer KEY` or `X-Api-Key: KEY` on every route but the open ones."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from alice.config import Settings
from alice.http.errors import ApiError

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


class ApiKeyMiddleware:
    """Refuses requests without a configured key with a 401 in the OpenAI envelope."""

    def __init__(self, app: ASGIApp, settings: Callable[[], Settings]) -> None:
        """`settings`: the server's, asked for when BentoML builds the app's middleware (in the
        worker process, before the service instance starts); a bad one raises ConfigError there."""
        self.app = app
        self.keys = settings().api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        presented = presented_key(Headers(scope=scope))
        if presented and key_matches(presented, self.keys):
            await self.app(scope, receive, send)
            return
        # Never a hint of which part failed: missing and wrong keys get the same answer.
        error = ApiError(401, "a valid API key is required (Authorization: Bearer KEY or X-Api-Key: KEY)",
                         code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.openai_response()(scope, receive, send)


def warn_if_open_beyond_loopback(keys: list[str], addresses: list[str] | None = None, *, tls: bool = False) -> None:
    """No key, or keys over plain HTTP, are fine on one's own machine; on a network anyone could
    use the GPU, or read the keys and prompts off the Wi-Fi, so say so.

    `addresses` defaults to those this process really listens on: a BentoML worker inherits
    its listening socket, and BentoML's configured host stays 0.0.0.0 whatever `--host` says.
    """
    if keys:
        logger.info("API keys required (%d configured)", len(keys))
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
