"""End to end: what the open `/metrics` and the access log say about the paths clients send.

Image names are the only protection an image (and the prompt in its PNG) has, and anyone may
read `/metrics`: no path a client sends may show there or in the log at INFO, and a stranger's
requests must not grow `/metrics` without bound. BentoML's traffic metrics and access log run
outside ALICE's middleware, so only a real `bentoml serve` shows this (`/metrics` hangs under
TestClient).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from harness.environment import alice_environment
from harness.server import ServerProcess, running_server

pytestmark = pytest.mark.e2e

API_KEY = "metrics-privacy-key"
KEYED = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("metrics-privacy")
    with alice_environment(tmp, {"ALICE_API_KEYS": API_KEY}), running_server(tmp / "server.log") as running:
        yield running


def metrics_text(server: ServerProcess) -> str:
    response = httpx.get(f"{server.url}/metrics", timeout=60)
    assert response.status_code == 200
    return response.text


def test_no_image_name_web_file_or_unmatched_path_in_metrics_or_access_log(server):
    generated = httpx.post(f"{server.url}/generate", headers=KEYED, timeout=120,
                           json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2})
    assert generated.status_code == 200, generated.text
    url = generated.json()["images"][0]["url"]
    image_name = url.rsplit("/", 1)[1].removesuffix(".png")
    probe = secrets.token_hex(8)  # in every other path, to find it wherever it lands
    fetched = {
        url: 200,
        f"{server.url}/web/": 200,
        f"{server.url}/web/app.js": 200,
        f"{server.url}/web/{probe}-missing.css": 404,
        f"{server.url}/images/{probe}0000000000000000.png": 404,
        f"{server.url}/{probe}/wp-admin/setup.php": 401,
        f"{server.url}/v1/jobs/{probe}-job": 401,
    }
    with httpx.Client(timeout=30) as client:
        for address, status in fetched.items():
            assert client.get(address).status_code == status, address
        assert client.get(f"{server.url}/v1/jobs/{probe}-keyed", headers=KEYED).status_code == 404

    text = metrics_text(server)
    assert image_name not in text
    assert probe not in text and "app.js" not in text and "wp-admin" not in text
    # Still Prometheus text with BentoML's request series, labelled by route, and ALICE's own.
    assert 'endpoint="/images/{name}"' in text and 'endpoint="/web/{path}"' in text
    assert 'endpoint="/generate"' in text and "alice_images_total" in text

    log = server.log_path.read_text(errors="replace")
    assert "path=/images/{name}" in log  # the access log is on, at INFO, with the route
    assert image_name not in log and probe not in log and "app.js" not in log


def test_strangers_requests_to_distinct_paths_do_not_grow_metrics(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/no-such-path-warm-up")
        client.get(f"/images/{secrets.token_hex(16)}.png")
        before = len(metrics_text(server))
        for n in range(1500):
            assert client.get(f"/no-such-path-{n}-{secrets.token_hex(4)}").status_code == 401
            assert client.get(f"/images/{secrets.token_hex(16)}.png").status_code == 404
        after = len(metrics_text(server))
    assert after - before < 50_000, (before, after)
