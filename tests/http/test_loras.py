"""LoRAs from the store, chosen by settings or by `<lora:name:scale>` in the prompt, unloaded after."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from alice.image_store import parse_a1111_parameters
from tests.http.conftest import start_client
from tests.support import write_demo_lora

SMALL = {"width": 64, "height": 64, "steps": 4, "scheduler": "ddim", "seed": 8}


@pytest.fixture(scope="module")
def lora_client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loras")
    for client in start_client(tmp):
        from alice import model_store

        model_store.import_lora_file(write_demo_lora(tmp / "lora-file"), "inky")
        yield client


def draw(client, prompt="a boat", **extra) -> bytes:
    """The image's pixels (the PNG's text differs with the prompt, so bytes would not compare)."""
    response = client.post("/generate", json={"prompt": prompt, **SMALL, **extra})
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]["b64_json"]))).tobytes()


def test_lora_by_settings_and_by_prompt_tag_and_clean_afterwards(lora_client):
    plain = draw(lora_client)
    with_lora = draw(lora_client, loras=[{"name": "inky", "scale": 1.0}])
    assert with_lora != plain
    assert draw(lora_client, prompt="a boat <lora:inky:1.0>") == with_lora  # the tag leaves the text clean
    assert draw(lora_client, prompt="a boat <lora:inky:0.3>") not in (plain, with_lora)
    # Unloaded after each request: the next one is the plain model again.
    assert draw(lora_client) == plain
    response = lora_client.post("/generate", json={"prompt": "a boat", **SMALL, "loras": [{"name": "inky"}]})
    parameters = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0]["b64_json"]))).info["parameters"]
    assert parse_a1111_parameters(parameters)["settings"]["LoRAs"] == "inky:1"


def test_lora_through_sam_settings(lora_client):
    response = lora_client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "a boat"}],
        "metadata": {**SMALL, "loras": [{"name": "inky", "scale": 0.5}]},
    })
    assert response.status_code == 200, response.text


def test_unknown_lora_is_404_before_any_work(lora_client):
    response = lora_client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "a boat <lora:nope:1>"}], "metadata": SMALL})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "loras" and "nope" in response.json()["error"]["message"]
    response = lora_client.post("/generate", json={"prompt": "x", **SMALL, "loras": [{"name": "inky", "scale": 99}]})
    assert response.status_code == 400


def test_a_lora_is_not_a_model_to_draw_with_nor_listed_as_one(lora_client):
    assert lora_client.post("/generate", json={"prompt": "x", **SMALL, "model": "inky"}).status_code == 404
    assert [m["id"] for m in lora_client.get("/v1/models").json()["data"]] == ["sd/alice-demo"]
