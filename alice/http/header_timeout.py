"""A header timeout for the HTTP server under `bentoml serve` (uvicorn), which has none.

uvicorn closes a keep-alive connection idle for `timeout_keep_alive` (5 s as BentoML starts it)
after an answer, but a connection that never completes its first request's headers, or that
sends the next request's first bytes and then trickles, is held for as long as its client
likes: a few hundred such connections hold the server's sockets. Neither BentoML 1.4 (its
`api_server.http` options) nor uvicorn 0.54 (its Config: no header timeout; h11's
`max_incomplete_event_size` bounds the bytes, not the time) offers one, so this adds it to
uvicorn's protocol classes: from a connection's opening, and from the first bytes after an
answer, the request's headers must be complete within ALICE_HEADER_TIMEOUT_S or the
connection is closed. A request whose headers arrived may take as long as it needs.

Installed in the server's worker process before uvicorn builds its protocol (service.py).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("alice.http")

_timeout_s: float | None = None


def install(timeout_s: float) -> None:
    """Give uvicorn's HTTP protocols (h11, and httptools where installed) the header timeout."""
    global _timeout_s
    _timeout_s = timeout_s
    from uvicorn.protocols.http.h11_impl import H11Protocol

    _patch(H11Protocol)
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed: uvicorn speaks h11
        return
    _patch(HttpToolsProtocol)


def _patch(protocol: type) -> None:
    if getattr(protocol, "_alice_header_timeout", False):
        return  # once per class, whatever the number of installs (tests start several services)
    made, received, lost = protocol.connection_made, protocol.data_received, protocol.connection_lost

    def connection_made(self: Any, transport: Any) -> None:
        made(self, transport)
        _arm(self)

    def data_received(self: Any, data: bytes) -> None:
        if getattr(self, "_alice_timer", None) is None and (self.cycle is None or self.cycle.response_complete):
            _arm(self)  # the first bytes of the next request: its headers are due
        received(self, data)
        timer = getattr(self, "_alice_timer", None)
        if timer is not None and self.cycle is not None and self.cycle is not self._alice_cycle:
            timer.cancel()  # a new request began: its headers are complete
            self._alice_timer = None

    def connection_lost(self: Any, exc: Exception | None) -> None:
        timer = getattr(self, "_alice_timer", None)
        if timer is not None:
            timer.cancel()
            self._alice_timer = None
        lost(self, exc)

    protocol.connection_made = connection_made
    protocol.data_received = data_received
    protocol.connection_lost = connection_lost
    protocol._alice_header_timeout = True


def _arm(protocol: Any) -> None:
    if _timeout_s is None:
        return
    protocol._alice_cycle = protocol.cycle
    protocol._alice_timer = protocol.loop.call_later(_timeout_s, _expire, protocol)


def _expire(protocol: Any) -> None:
    protocol._alice_timer = None
    if protocol.cycle is protocol._alice_cycle and not protocol.transport.is_closing():
        logger.debug("closing a connection whose request headers took over %s s", _timeout_s)
        protocol.transport.close()
