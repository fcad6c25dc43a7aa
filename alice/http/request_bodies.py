"""What a request body may be, checked before any route reads it: its size, and on `/generate` its form.

Starlette and BentoML read a body whole and parse it before any route can look at its size:
a 300 MB body to `/generate` held the event loop for 25 s and 270 MB of memory before its
400. Here a body over `MAX_BODY_BYTES` is refused by its `Content-Length` before a byte is
read, and a chunked body (no length) is counted as it arrives and refused at the limit.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alice.http.errors import ApiError

# The biggest legitimate body is an img2img input at its limit (MAX_INPUT_BYTES, 20 MiB) as
# base64 in JSON (26.7 MiB) or as a multipart upload, with the settings beside it.
MAX_BODY_BYTES = 32 << 20

# BentoML's own API routes parse form bodies with Starlette and answer a malformed one (no
# boundary, say) with a 500; `/generate` is documented as JSON, so forms are refused there.
JSON_ONLY_PATHS = frozenset({"/generate"})
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _too_large() -> ApiError:
    return ApiError(413, f"the request body is over {MAX_BODY_BYTES // (1 << 20)} MiB ({MAX_BODY_BYTES} bytes)",
                    code="body_too_large")


def refusal(scope: Scope, headers: Headers, max_bytes: int = MAX_BODY_BYTES) -> ApiError | None:
    """Why this request's body is refused by its headers alone; None if they are fine."""
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        return _too_large()
    media_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if scope["path"] in JSON_ONLY_PATHS and media_type in FORM_TYPES:
        return ApiError(400, f"POST {scope['path']} takes a JSON body (Content-Type: application/json), "
                             f"not {media_type}", code="invalid_content_type")
    return None


class BodyLimitMiddleware:
    """Refuses bodies over the limit (413) and form bodies on `/generate` (400), in the OpenAI envelope."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = refusal(scope, headers, self.max_bytes)
        if error is None and "transfer-encoding" in headers:  # chunked: no length to check up front
            try:
                body = await self._read_chunked(receive)
            except ClientDisconnect:
                return  # nobody is left to answer
            if body is None:
                error = _too_large()
            else:
                receive = _replay(body, receive)
        if error is not None:
            response = error.openai_response()
            if error.status == 413:
                # The rest of the body is unread: without `Connection: close` uvicorn would read
                # and discard all of it to keep the connection; closing stops the upload at once.
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _read_chunked(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passes the limit (the rest is never read)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body read already, then the client's own messages
    (a route waiting on a job listens for the client hanging up)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
