"""HTTPS for real: a certificate from `alice tls init`, `bentoml serve` over TLS, the clients
that trust the authority (openai SDK, BentoML's client, nginx in front) and one that does not."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import bentoml
import httpx
import openai
import pytest

from harness.environment import ROOT, alice_environment, environment
from harness.ports import free_port
from harness.server import ServerProcess, running_server

pytestmark = pytest.mark.e2e

KEY = "tls-test-key"
TINY = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def authority(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tls") / "tls"
    made = subprocess.run(
        [sys.executable, "-m", "alice", "tls", "init", "--dir", str(folder), "--host", "localhost", "--host", "127.0.0.1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert made.returncode == 0, made.stderr
    # It tells the operator what to set and what to install on the Mac.
    assert f"ALICE_TLS_CERTFILE={folder / 'server.pem'}" in made.stdout
    assert "security add-trusted-cert" in made.stdout
    return folder


@pytest.fixture(scope="module")
def trusting(authority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(authority / "ca.pem"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, authority, trusting):
    tmp = tmp_path_factory.mktemp("tls-server")
    with alice_environment(tmp, {}) as root, running_server(
        root / "server.log", verify=trusting, ALICE_API_KEYS=KEY,
        ALICE_TLS_CERTFILE=str(authority / "server.pem"), ALICE_TLS_KEYFILE=str(authority / "server.key"),
    ) as running:
        yield running


def test_openai_sdk_trusting_the_authority_gets_https_images(server, trusting):
    assert server.url.startswith("https://")
    with httpx.Client(verify=trusting, timeout=120) as http:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, http_client=http, max_retries=0)
        answer = client.chat.completions.create(
            model="sd/alice-demo", messages=[{"role": "user", "content": "a red circle"}],
            extra_body={"metadata": TINY},
        )
        [url] = answer.choices[0].message.model_extra["image_urls"]
        # The URLs handed out are https, like the server, and answer over it.
        assert url.startswith(f"{server.url}/images/")
        image = http.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_bentoml_client_trusting_the_authority(server, authority):
    with environment({"SSL_CERT_FILE": str(authority / "ca.pem")}):
        with bentoml.SyncHTTPClient(server.url, token=KEY, timeout=120) as client:
            result = client.generate(prompt="a blue square", **TINY)
    [image] = result["images"]
    assert image["url"].startswith("https://127.0.0.1:")


def test_a_client_that_does_not_trust_it_fails_and_nothing_is_served_in_clear(server):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/health")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https://", "http://") + "/health", timeout=10)


def test_a_key_that_does_not_match_the_certificate_stops_the_start(tmp_path, authority):
    other = tmp_path / "other"
    made = subprocess.run(
        [sys.executable, "-m", "alice", "tls", "init", "--dir", str(other), "--host", "localhost"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert made.returncode == 0, made.stderr
    with alice_environment(tmp_path, {}) as root:
        doomed = ServerProcess(root / "server.log", ALICE_TLS_CERTFILE=str(authority / "server.pem"),
                               ALICE_TLS_KEYFILE=str(other / "server.key"))
        with pytest.raises(AssertionError, match="server exited") as failure:
            doomed.wait_ready()
    assert "is not the key of the certificate" in str(failure.value)


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is installed by `make test`")
def test_nginx_terminates_tls_in_front_of_alice_with_sams_call(tmp_path, authority, trusting):
    """deploy/nginx.conf's own TLS server block, pointed at a plain-HTTP ALICE on this machine."""
    with alice_environment(tmp_path, {}) as root, running_server(root / "alice.log", ALICE_API_KEYS=KEY) as alice:
        http_port, https_port = free_port(), free_port()
        conf = nginx_config(tmp_path, alice.port, http_port, https_port, authority)
        proxy = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            base = f"https://127.0.0.1:{https_port}"
            wait_for(lambda: httpx.get(f"{base}/health", verify=trusting, timeout=2).status_code == 200)
            # SAM: chat completion with X-Api-Key only, then the image URL with no key.
            answer = httpx.post(
                f"{base}/chat/completions", headers={"X-Api-Key": KEY}, verify=trusting, timeout=120,
                json={"model": "sd/alice-demo", "messages": [{"role": "user", "content": "a green triangle"}],
                      "metadata": TINY},
            )
            assert answer.status_code == 200, answer.text
            [url] = answer.json()["choices"][0]["message"]["image_urls"]
            assert url.startswith(f"{base}/images/"), url
            image = httpx.get(url, verify=trusting)
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            # Plain HTTP is redirected to HTTPS, never answered.
            plain = httpx.get(f"http://127.0.0.1:{http_port}/health", follow_redirects=False)
            assert plain.status_code == 301 and plain.headers["location"].startswith("https://")
        finally:
            proxy.terminate()
            proxy.wait(30)


def nginx_config(folder: Path, alice_port: int | list[int], http_port: int, https_port: int, authority: Path) -> Path:
    """The shipped conf.d file, with this machine's ports and files in place of the deployment's
    (several ALICE ports: round-robin over them)."""
    ports = alice_port if isinstance(alice_port, list) else [alice_port]
    shipped = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    upstream_start = shipped.index("upstream alice {")
    upstream_end = shipped.index("}", upstream_start) + 1
    site = (
        shipped[:upstream_start]
        + "upstream alice {\n" + "".join(f"    server 127.0.0.1:{port};\n" for port in ports) + "    keepalive 4;\n}"
        + shipped[upstream_end:]
    )
    site = (site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
                .replace("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
                .replace("https://$host$request_uri", f"https://$host:{https_port}$request_uri")
                .replace("/etc/nginx/tls/server.pem", str(authority / "server.pem"))
                .replace("/etc/nginx/tls/server.key", str(authority / "server.key")))
    assert str(authority) in site and f"127.0.0.1:{https_port} ssl" in site, "deploy/nginx.conf lost its TLS block"
    conf = folder / "nginx.conf"
    conf.write_text(
        f"daemon off;\nworker_processes 1;\npid {folder / 'nginx.pid'};\nerror_log {folder / 'error.log'};\n"
        f"events {{ worker_connections 64; }}\n"
        f"http {{\n access_log off;\n client_body_temp_path {folder}/body;\n proxy_temp_path {folder}/proxy;\n"
        f"{site}\n}}\n"
    )
    return conf


def wait_for(condition, timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "nginx never answered"
        time.sleep(0.2)
