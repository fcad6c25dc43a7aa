"""One file over HTTP into a `.part` file: resumable, checksummed, cancellable."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import httpx

from alice.downloads.addresses import AddressRefused

CHUNK = 1 << 20
UNREACHABLE = "the address is not allowed, or it did not answer"


class DownloadCancelled(Exception):
    pass


class DownloadFailed(Exception):
    pass


FileProgress = Callable[[int, "int | None"], None]
"""Told (bytes of this file on disk, its full size if known) before each write; it may raise
DownloadFailed to stop the download (a size cap, the disk reserve)."""


def fetch_file(
    client: httpx.Client,
    url: str,
    destination: Path,
    *,
    headers: dict[str, str] | None = None,
    sha256: str | None = None,
    progress: FileProgress | None = None,
    cancelled: Callable[[], bool] = lambda: False,
    attempts: int = 3,
) -> Path:
    """Download `url` to `destination`, resuming from `destination.part` if an earlier try left one.

    A dropped connection is retried from where it stopped (HTTP Range), up to `attempts`
    times; a wrong SHA-256 deletes the file and fails. Error messages name the URL without its
    secrets, and one message covers an address that is refused, does not resolve or does not
    answer, so they cannot be used to map which hosts and ports are there.
    """
    part = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _ in range(attempts):
        if cancelled():
            raise DownloadCancelled()
        try:
            _fetch_once(client, url, part, headers or {}, progress, cancelled)
            break
        except (AddressRefused, httpx.UnsupportedProtocol, httpx.TooManyRedirects):
            raise DownloadFailed(f"cannot download {redact_url(url)}: {UNREACHABLE}") from None
        except httpx.TransportError as exc:
            last_error = exc  # keep the .part: the next try resumes it
    else:
        if isinstance(last_error, (httpx.ConnectError, httpx.ConnectTimeout)):
            raise DownloadFailed(f"cannot download {redact_url(url)}: {UNREACHABLE}")
        raise DownloadFailed(f"the download of {redact_url(url)} broke off {attempts} times "
                             f"({type(last_error).__name__})")
    if sha256 and _sha256(part) != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadFailed(f"checksum mismatch for {destination.name}: the file is not what the source announced")
    os.replace(part, destination)
    return destination


def _fetch_once(
    client: httpx.Client,
    url: str,
    part: Path,
    headers: dict[str, str],
    progress: FileProgress | None,
    cancelled: Callable[[], bool],
) -> None:
    have = part.stat().st_size if part.exists() else 0
    request_headers = dict(headers)
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with client.stream("GET", url, headers=request_headers, follow_redirects=True) as response:
        if response.status_code == 416:  # already complete
            return
        if response.status_code not in (200, 206):
            raise DownloadFailed(f"the source answered HTTP {response.status_code} for {redact_url(url)}")
        if response.status_code == 200 and have:
            have = 0  # the server ignored Range: start over
        length = response.headers.get("content-length")
        total = have + int(length) if length is not None else None
        report = progress or (lambda done, size: None)
        report(have, total)
        with open(part, "ab" if have else "wb") as file:
            for chunk in response.iter_bytes():  # as it arrives, so a drop loses nothing received
                if cancelled():
                    raise DownloadCancelled()
                report(have + len(chunk), total)  # before the write: it may refuse the chunk
                file.write(chunk)
                have += len(chunk)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def redact_url(url: str) -> str:
    """The URL as it may be shown and logged: no `user:password@`, every query value (tokens,
    signatures, X-Amz-*) and the fragment replaced. The real URL stays in the task's request,
    the one place it is needed."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        # Keys stay (they tell what was sent); a bare item may itself be a token.
        query = "&".join(item.split("=", 1)[0] + "=REDACTED" if "=" in item else "REDACTED"
                         for item in parts.query.split("&") if item)
    except ValueError:
        return "(a URL that does not parse)"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")


def redact_urls(text: str) -> str:
    """`text` with every URL in it redacted (exception messages, log lines)."""
    return _URL.sub(lambda match: redact_url(match.group(0)), text)


class _RedactUrls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_urls(record.getMessage()), None
        return True


# httpx logs every request's full URL at INFO ("HTTP Request: GET https://user:pw@...?token=...").
logging.getLogger("httpx").addFilter(_RedactUrls())
