"""Absolute URLs the caller can reach, for the images ALICE hands out."""

from __future__ import annotations

import re

from starlette.datastructures import Headers

# A host[:port] as a Host or X-Forwarded-Host header may carry it; anything else is ignored.
_HOST = re.compile(r"^[A-Za-z0-9.\-_\[\]:]{1,255}$")


def base_url(headers: Headers, scheme: str, public_url: str | None) -> str:
    """The configured public URL, else what the proxy or the client says it called."""
    if public_url:
        return public_url
    proto = _first(headers.get("x-forwarded-proto")) or scheme
    if proto not in ("http", "https"):
        proto = scheme
    host = _first(headers.get("x-forwarded-host")) or headers.get("host", "")
    if not _HOST.match(host):
        host = "localhost"
    return f"{proto}://{host}"


def image_url(base: str, name: str) -> str:
    return f"{base}/images/{name}"


def _first(value: str | None) -> str:
    # Proxies chain values: "https, http" — the first is what the client used.
    return (value or "").split(",")[0].strip()
