"""The default model is configurable; another stored model is loaded on its first request."""

from __future__ import annotations

import time

import pytest
from starlette.testclient import TestClient

from harness.environment import alice_environment
from tests.http.conftest import service_client


@pytest.fixture(scope="module")
def client_without_default(tmp_path_factory) -> TestClient:
    tmp = tmp_path_factory.mktemp("switch")
    # A model cache big enough for one demo model (about 5 MB) but not two.
    with alice_environment(tmp, {"ALICE_DEFAULT_MODEL": "not-stored", "ALICE_MODEL_CACHE_GB": "0.007"}):
        from alice.models import checkpoints
        from alice.engine.demo import save_untrained_demo

        save_untrained_demo(tmp / "second", seed=1)
        checkpoints.import_pipeline_folder(tmp / "second", "second")
        with service_client() as client:
            yield client


def test_missing_default_model_is_reported_and_never_ready(client_without_default):
    client = client_without_default
    deadline = time.monotonic() + 30
    while client.get("/health").json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    health = client.get("/health").json()
    assert health["status"] == "error" and "not-stored" in health["error"]
    assert client.get("/readyz").status_code == 503
    response = client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 1})
    assert response.status_code == 404 and "not-stored" in response.json()["error"]


def test_other_stored_models_load_on_first_request(client_without_default):
    client = client_without_default
    assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {"sd/alice-demo", "sd/second"}
    first = client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3,
                                           "model": "sd/second"})
    assert first.status_code == 200
    assert client.get("/health").json()["loaded_models"] == ["second"]
    other = client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3,
                                           "model": "alice-demo"})
    # Different weights, same request: different pictures; the budget keeps one model in memory.
    assert other.json()["images"][0]["b64_json"] != first.json()["images"][0]["b64_json"]
    assert client.get("/health").json()["loaded_models"] == ["alice-demo"]
    again = client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 3,
                                           "model": "second"})
    assert again.json()["images"][0]["b64_json"] == first.json()["images"][0]["b64_json"]
