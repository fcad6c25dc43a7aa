"""The image's HEALTHCHECK command (deploy/healthcheck.py, as the Bento carries it), run here
against a stand-in `/readyz` on a free port: the ports, HTTPS and proxies a container may have."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from alice.http import tls
from harness.ports import free_port
from tests.deploy.conftest import ImageBuild

DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: going through it would fail


class Readyz(BaseHTTPRequestHandler):
    status = 200  # set per server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def readyz_server(status: int, tls_files: tls.LocalAuthority | None = None) -> Iterator[int]:
    handler = type("Handler", (Readyz,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    if tls_files:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def health_check(image_build: ImageBuild, **env: str) -> subprocess.CompletedProcess[str]:
    script = image_build.context / "src" / "deploy" / "healthcheck.py"  # what the image runs
    clean = {key: value for key, value in os.environ.items()
             if key not in {"PORT", "BENTOML_PORT", "ALICE_TLS_CERTFILE"} and not key.lower().endswith("_proxy")}
    proxies = {"HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "http_proxy": DEAD_PROXY, "https_proxy": DEAD_PROXY}
    return subprocess.run([sys.executable, str(script)], env={**clean, **proxies, **env},
                          capture_output=True, text=True, timeout=30)


def test_healthy_when_readyz_answers_on_port(image_build: ImageBuild) -> None:
    with readyz_server(200) as port:
        done = health_check(image_build, PORT=str(port))
    assert done.returncode == 0, done.stderr


def test_unhealthy_while_not_ready_and_says_why(image_build: ImageBuild) -> None:
    with readyz_server(503) as port:
        done = health_check(image_build, PORT=str(port))
    assert done.returncode == 1 and "503" in done.stderr and f"127.0.0.1:{port}/readyz" in done.stderr
    done = health_check(image_build, PORT=str(free_port()))  # nothing listening yet
    assert done.returncode == 1 and "refused" in done.stderr.lower()


def test_the_port_follows_port_then_bentoml_port(image_build: ImageBuild) -> None:
    """As the image's entrypoint: PORT wins, then BENTOML_PORT (3000 when neither is set)."""
    with readyz_server(200) as port:
        assert health_check(image_build, BENTOML_PORT=str(port)).returncode == 0
        assert health_check(image_build, PORT=str(port), BENTOML_PORT=str(free_port())).returncode == 0
        assert health_check(image_build, PORT=str(free_port()), BENTOML_PORT=str(port)).returncode == 1


def test_https_when_alice_serves_tls_with_a_certificate_for_other_names(image_build: ImageBuild, tmp_path: Path) -> None:
    """With ALICE_TLS_CERTFILE the server speaks only HTTPS, for the host's public names, not
    127.0.0.1 and not from an authority the container trusts: the check must not verify it."""
    made = tls.init_local_authority(tmp_path / "tls", ["gpu-box", "gpu-box.local"])
    with readyz_server(200, made) as port:
        done = health_check(image_build, PORT=str(port), ALICE_TLS_CERTFILE=str(made.server_cert))
        assert done.returncode == 0, done.stderr
        # Plain HTTP to the TLS port is not taken for a healthy answer.
        assert health_check(image_build, PORT=str(port)).returncode == 1


def test_a_stalled_server_is_unhealthy_before_docker_kills_the_check(image_build: ImageBuild) -> None:
    """A server that accepts the connection but never answers: the check gives up by itself
    within the HEALTHCHECK's 5 s and says so (docker would kill it with no word)."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()  # the kernel completes the connection; nobody ever answers
        started = time.monotonic()
        done = health_check(image_build, PORT=str(listening.getsockname()[1]))
        waited = time.monotonic() - started
    assert done.returncode == 1 and "timed out" in done.stderr, done.stderr
    assert waited < 5 + 3  # 4 s timeout, plus Python's start on a busy machine
