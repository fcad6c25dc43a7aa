"""SDXL goes through the same loading and generation code as SD 1.5."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from tests.http.conftest import start_client
from tests.support import save_tiny_sdxl_pipeline


@pytest.fixture(scope="module")
def sdxl_client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdxl")
    for client in start_client(tmp):
        from alice.models import checkpoints

        stored = checkpoints.import_pipeline_folder(save_tiny_sdxl_pipeline(tmp / "tiny-xl"), "tiny-xl")
        assert stored.family == "sdxl"
        yield client


def test_sdxl_model_listed_with_its_type_and_generates(sdxl_client):
    models = {m["id"]: m["type"] for m in sdxl_client.get("/v1/models").json()["data"]}
    assert models == {"sd/alice-demo": "sd15", "sd/tiny-xl": "sdxl"}
    for scheduler in ("euler", "dpm++_2m_karras", "ddim"):
        response = sdxl_client.post("/generate", json={"prompt": "a castle", "model": "sd/tiny-xl", "width": 64,
                                                       "height": 96, "steps": 3, "seed": 2, "scheduler": scheduler})
        assert response.status_code == 200, response.text
        png = base64.b64decode(response.json()["images"][0]["b64_json"])
        assert Image.open(io.BytesIO(png)).size == (64, 96)


def test_sdxl_img2img(sdxl_client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "navy").save(buffer, format="PNG")
    response = sdxl_client.post("/generate", json={
        "prompt": "a castle", "model": "tiny-xl", "width": 64, "height": 64, "steps": 4, "seed": 2,
        "input_image": base64.b64encode(buffer.getvalue()).decode(), "strength": 0.5})
    assert response.status_code == 200, response.text
