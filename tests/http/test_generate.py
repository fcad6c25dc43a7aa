"""`POST /generate`, the typed native API, through the real BentoML app on the demo model."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

SMALL = {"width": 64, "height": 64, "steps": 4}


def generate(client, **body):
    return client.post("/generate", json={"prompt": "a lighthouse at dusk", **SMALL, **body})


def test_generates_png_of_the_asked_size_with_metadata(client):
    response = generate(client, width=96, height=64, seed=7, scheduler="DDIM", negative_prompt="blur")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 7 and body["scheduler"] == "ddim" and body["steps"] == 4
    assert body["model"] == "alice-demo"
    assert body["timings"]["generation_s"] > 0
    [image] = body["images"]
    png = base64.b64decode(image["b64_json"])
    assert Image.open(io.BytesIO(png)).size == (96, 64)
    # The URL serves the very same bytes, without a key, as image/png.
    assert image["url"] == f"http://testserver/images/{image['name']}"
    served = client.get(f"/images/{image['name']}")
    assert served.status_code == 200
    assert served.headers["content-type"] == "image/png"
    assert served.content == png
    # AUTOMATIC1111 metadata travels inside the PNG.
    text = Image.open(io.BytesIO(png)).info["parameters"]
    assert text.startswith("a lighthouse at dusk\nNegative prompt: blur\nSteps: 4, Sampler: DDIM, CFG scale: 7.5, Seed: 7")
    assert "Size: 96x64, Model: alice-demo" in text


def test_no_size_means_the_model_native_size(client):
    """Like diffusers: a model drawn far from its training size draws badly (the demo's is 64)."""
    response = client.post("/generate", json={"prompt": "a red circle on a blue background", "steps": 2, "seed": 1})
    assert response.status_code == 200, response.text
    png = base64.b64decode(response.json()["images"][0]["b64_json"])
    assert Image.open(io.BytesIO(png)).size == (64, 64)
    only_width = generate(client, width=128, height=None)
    assert only_width.status_code == 200, only_width.text
    assert Image.open(io.BytesIO(base64.b64decode(only_width.json()["images"][0]["b64_json"]))).size == (128, 64)


def test_same_seed_same_bytes_other_seed_other_image(client):
    first = generate(client, seed=123).json()["images"][0]["b64_json"]
    again = generate(client, seed=123).json()["images"][0]["b64_json"]
    other = generate(client, seed=124).json()["images"][0]["b64_json"]
    assert first == again
    assert first != other


def test_several_images_use_consecutive_seeds_in_one_call(client):
    body = generate(client, seed=10, num_images=2).json()
    assert [image["seed"] for image in body["images"]] == [10, 11]
    assert client.get("/v1/jobs").json()["data"][0]["batch"] == 2
    alone = generate(client, seed=11).json()["images"][0]["b64_json"]
    # Drawn in one batch: its unbatched twin up to the last bits of the arithmetic.
    assert psnr(decode(body["images"][1]["b64_json"]), decode(alone)) >= 40
    assert psnr(decode(body["images"][0]["b64_json"]), decode(alone)) < 30


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def psnr(a: Image.Image, b: Image.Image) -> float:
    import numpy as np

    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def test_random_seed_is_reported(client):
    body = generate(client).json()
    assert 0 <= body["seed"] < 2**32


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"width": 65}, "width", "multiple of 8"),
        ({"height": 4096}, "height", "less than or equal to 2048"),
        ({"width": -64}, "width", "greater than or equal to 64"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"steps": 151}, "steps", "less than or equal to 150"),
        ({"guidance_scale": 31}, "guidance_scale", "less than or equal to 30"),
        ({"seed": 2**32}, "seed", "less than or equal to 4294967295"),
        ({"seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt": ""}, "prompt", "at least 1 character"),
        ({"prompt": "   "}, "prompt", "must contain text"),
        ({"prompt": "x" * 4001}, "prompt", "at most 4000 characters"),
        ({"scheduler": "warp-drive"}, "scheduler", "dpm++_2m_karras"),
        ({"steps": "many"}, "steps", "valid integer"),
        ({"step": 10}, "step", "Extra inputs are not permitted"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_limit(client, change, field, words):
    response = generate(client, **change)
    assert response.status_code == 400, response.text
    details = response.json()["detail"]
    assert any(d["loc"][-1] == field and words in d["msg"] for d in details), details


def test_pixel_budget_and_image_count_limits(client):
    response = generate(client, width=2048, height=2048)
    assert response.status_code == 400
    assert "ALICE_MAX_PIXELS" in response.json()["error"]
    assert response.json()["detail"][0]["loc"] == ["width"]
    response = generate(client, num_images=5)
    assert response.status_code == 400
    assert "num_images" in response.json()["error"]


def test_nan_guidance_is_refused(client):
    response = client.post(
        "/generate",
        content=b'{"prompt": "x", "width": 64, "height": 64, "steps": 4, "guidance_scale": NaN}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


def test_unknown_model_is_404(client):
    response = generate(client, model="sd/no-such-model")
    assert response.status_code == 404
    assert "no-such-model" in response.json()["error"]
    response = generate(client, model="../../etc")
    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["model"]


def test_model_id_with_and_without_prefix(client):
    for model in ("alice-demo", "sd/alice-demo", "SD/alice-demo"):
        assert generate(client, model=model).json()["model"] == "alice-demo"


def test_health_and_readiness(client):
    health = client.get("/health").json()
    assert health["status"] == "ok"
    assert health["gpu_available"] is False and health["gpuAvailable"] is False
    assert health["models_loaded"] == health["modelsLoaded"] == 1
    assert isinstance(health["version"], str)
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize("name", ["../service.py", "..%2F..%2Fservice.py", "0" * 32 + ".PNG", "x.png", "%00.png"])
def test_image_route_refuses_anything_but_a_stored_name(client, name):
    response = client.get(f"/images/{name}")
    assert response.status_code == 404
    assert "png" not in response.headers["content-type"]
