"""One file over HTTP into a `.part` file: resumable, checksummed, cancellable."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import httpx

CHUNK = 1 << 20


class DownloadCancelled(Exception):
    pass


class DownloadFailed(Exception):
    pass


FileProgress = Callable[[int, "int | None"], None]
"""Told (bytes of this file on disk, its full size if known) as the download goes."""


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
    times; a wrong SHA-256 deletes the file and fails.
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
        except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
            last_error = exc  # keep the .part: the next try resumes it
    else:
        raise DownloadFailed(f"download failed after {attempts} tries: {type(last_error).__name__}: {last_error}")
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
            raise DownloadFailed(f"the source answered HTTP {response.status_code} for {_safe(url)}")
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
                file.write(chunk)
                have += len(chunk)
                report(have, total)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe(url: str) -> str:
    """The URL without its query string: tokens travel there on some sites and must not be logged."""
    return url.split("?", 1)[0]
