"""The start-up warnings about a server without a key, or with keys over plain HTTP, tell the truth
about where it listens."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from alice.http.auth import warn_if_open_beyond_loopback


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """What `alice.auth` says at WARNING (the `alice` logger may not propagate to caplog)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("alice.auth")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def listening_on(host: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_no_warning_while_listening_on_loopback_only(warnings_logged):
    with listening_on("127.0.0.1"):
        warn_if_open_beyond_loopback([])
    assert warnings_logged == []


def test_warns_naming_the_address_while_listening_beyond_loopback(warnings_logged):
    with listening_on("0.0.0.0"):
        warn_if_open_beyond_loopback([])
    [message] = warnings_logged
    assert "no API key is configured and the server listens on 0.0.0.0" in message


def test_no_warning_with_a_key_over_https_wherever_it_listens(warnings_logged):
    with listening_on("0.0.0.0"):
        warn_if_open_beyond_loopback(["a-key"], tls=True)
    assert warnings_logged == []


def test_keys_over_plain_http_beyond_loopback_warn_of_clear_text(warnings_logged):
    warn_if_open_beyond_loopback(["a-key"], ["127.0.0.1"])
    assert warnings_logged == []
    warn_if_open_beyond_loopback(["a-key"], ["192.168.1.20"])
    [message] = warnings_logged
    assert "travel in clear text" in message and "192.168.1.20" in message and "ALICE_TLS_CERTFILE" in message


@pytest.mark.parametrize(("addresses", "warned"), [
    (["127.0.0.1", "::1", "localhost"], False),
    (["192.168.1.20"], True),
    (["::"], True),
    (["127.0.0.1", "10.0.0.5"], True),
])
def test_only_addresses_beyond_loopback_warn(warnings_logged, addresses, warned):
    warn_if_open_beyond_loopback([], addresses)
    assert bool(warnings_logged) == warned
