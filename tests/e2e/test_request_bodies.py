"""End to end: a body over the limit is refused before it is read, whether it states its
length or comes chunked, while `/health` keeps answering; a rejected body is not logged.

Only a real server shows this: the test client hands the app a whole body at once.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from alice.http.request_bodies import MAX_BODY_BYTES
from harness.environment import alice_environment
from harness.health_watch import HealthWatch
from harness.server import ServerProcess, running_server

pytestmark = pytest.mark.e2e

HUGE = 300 << 20  # what the attack sent
CHUNK = b"x" * (1 << 20)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("request-bodies")
    with alice_environment(tmp, {}), running_server(tmp / "server.log") as running:
        yield running


def request_head(server: ServerProcess, framing: str) -> bytes:
    return (f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        more = sock.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_stated_length_over_the_limit_is_refused_before_the_body_is_sent(server):
    with HealthWatch(server) as watch, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server, f"Content-Length: {HUGE}") + CHUNK)
        sock.settimeout(30)  # the server answers now; before, it waited for all 300 MB
        status, body = read_response(sock)
    assert status == 413, body
    assert body["error"]["code"] == "body_too_large" and "32 MiB" in body["error"]["message"]
    assert watch.worst_s < 1.0 and watch.failures == 0


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    answer: list[tuple[int, dict]] = []
    sent = 0
    with HealthWatch(server) as watch, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request_head(server, "Transfer-Encoding: chunked"))
        reader = threading.Thread(target=lambda: answer.append(read_response(sock)), daemon=True)
        reader.start()
        chunk = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
        with contextlib.suppress(OSError):  # the server may stop reading once it has answered
            while sent < HUGE and not answer:
                sock.sendall(chunk)
                sent += len(CHUNK)
            sock.sendall(b"0\r\n\r\n")
        reader.join(30)
    assert answer and answer[0][0] == 413, answer
    assert sent < 2 * MAX_BODY_BYTES, f"the answer came after {sent >> 20} MiB of a {HUGE >> 20} MiB body"
    assert watch.peak_rss - watch.baseline_rss < 100 << 20
    assert watch.worst_s < 1.0 and watch.failures == 0


def test_a_rejected_prompt_stays_out_of_the_log(server):
    response = httpx.post(f"{server.url}/generate", json={"prompt": "a secret lighthouse", "steps": "many"}, timeout=30)
    assert response.status_code == 400
    log = server.log_path.read_text(errors="replace")
    assert "secret lighthouse" not in log and "Traceback" not in log
