"""Load and unload models on demand, on the worker between generations."""

from __future__ import annotations


def test_unload_then_load_the_default_model(client):
    assert client.get("/health").json()["loaded_models"] == ["alice-demo"]
    response = client.post("/v1/models/sd/alice-demo/unload")
    assert response.status_code == 200 and response.json()["was_loaded"] is True
    assert client.get("/health").json()["loaded_models"] == []
    response = client.post("/v1/models/sd/alice-demo/load")
    assert response.status_code == 200 and response.json()["loaded_models"] == ["alice-demo"]
    assert client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 1}).status_code == 200


def test_unknown_models(client):
    assert client.post("/v1/models/sd/nope/load").status_code == 404
    assert client.post("/v1/models/sd/nope/unload").json()["was_loaded"] is False
    assert client.post("/v1/models/..%2Fx/load").status_code in (400, 404)
