"""The hires fix on the demo model: a second pass at the upscaled size, through every route,
counted against ALICE_MAX_PIXELS at its final size and written as A1111 writes it."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from alice.engine.spec import GenerationSpec, batch_key

SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 5, "scheduler": "euler"}


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_hires_fix_doubles_the_size_and_the_png_says_it(client):
    plain = client.post("/generate", json={"prompt": "a red circle", **SMALL}).json()
    body = client.post("/generate", json={"prompt": "a red circle", **SMALL, "hires_scale": 2, "hires_steps": 4,
                                          "hires_strength": 0.5}).json()
    image = png(body["images"][0]["b64_json"])
    assert image.size == (128, 128) and png(plain["images"][0]["b64_json"]).size == (64, 64)
    assert body["hires_scale"] == 2 and body["hires_upscaler"] == "latent" and body["width"] == 64
    assert image.info["parameters"].endswith(
        "Size: 64x64, Model: alice-demo, Hires upscale: 2, Hires steps: 4, Hires upscaler: Latent, Denoising strength: 0.5"
    )
    assert "Hires" not in png(plain["images"][0]["b64_json"]).info["parameters"]
    # Progress counted both passes: 4 steps, then int(4 x 0.5) = 2.
    job = client.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["step"] == job["total_steps"] == 6 and job["parameters"]["hires_scale"] == 2
    # The first pass is the plain drawing: upscaled and redrawn in part, it stays that picture.
    first = np.asarray(png(plain["images"][0]["b64_json"]).convert("RGB").resize((128, 128)), dtype=float)
    assert np.abs(np.asarray(image.convert("RGB"), dtype=float) - first).mean() < 40


def test_lanczos_upscales_the_decoded_image_and_draws_another(client):
    hires = {"prompt": "a red circle", **SMALL, "hires_scale": 1.5, "hires_strength": 0.5}
    latent = png(client.post("/generate", json=hires).json()["images"][0]["b64_json"])
    body = client.post("/generate", json={**hires, "hires_upscaler": "lanczos"}).json()
    lanczos = png(body["images"][0]["b64_json"])
    assert lanczos.size == latent.size == (96, 96)
    assert not np.array_equal(np.asarray(lanczos), np.asarray(latent))
    assert "Hires upscale: 1.5, Hires upscaler: Lanczos, Denoising strength: 0.5" in lanczos.info["parameters"]
    assert client.get(f"/v1/jobs/{body['job_id']}").json()["total_steps"] == 4 + 2  # hires_steps none = steps


def test_hires_fix_on_the_openai_and_sam_routes(client):
    images = client.post("/v1/images/generations", json={"prompt": "a red circle", "size": "64x64", "steps": 2,
                                                          "hires_scale": 2, "response_format": "b64_json"})
    assert images.status_code == 200, images.text
    assert png(images.json()["data"][0]["b64_json"]).size == (128, 128)
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a red circle"}],
                                                      "metadata": {"hires_scale": 2, **SMALL}})
    assert chat.status_code == 200, chat.text
    assert chat.json()["choices"][0]["message"]["metadata"]["hires_scale"] == 2


def test_hires_fix_past_the_pixel_limit_is_a_400_before_the_queue(client):
    jobs = len(client.get("/v1/jobs").json()["data"])
    response = client.post("/generate", json={"prompt": "a circle", "width": 768, "height": 768, "hires_scale": 2})
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert response.json()["detail"][0]["loc"] == ["hires_scale"]
    assert "1536x1536" in message and "1048576" in message and "ALICE_MAX_PIXELS" in message
    images = client.post("/v1/images/generations", json={"prompt": "a circle", "size": "1024x1024", "hires_scale": 1.5})
    assert images.status_code == 400 and images.json()["error"]["param"] == "hires_scale"
    assert len(client.get("/v1/jobs").json()["data"]) == jobs  # nothing queued


def test_hires_fix_settings_out_of_range_or_with_an_input_image_are_400s(client):
    for field, value in (("hires_scale", 5), ("hires_scale", 0.5), ("hires_strength", 0), ("hires_upscaler", "esrgan")):
        response = client.post("/generate", json={"prompt": "a circle", **SMALL, "hires_scale": 2, field: value})
        assert response.status_code == 400 and field in response.text, (field, response.text)
    red = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(red, format="PNG")
    response = client.post("/generate", json={"prompt": "a circle", **SMALL, "hires_scale": 2,
                                              "input_image": base64.b64encode(red.getvalue()).decode()})
    assert response.status_code == 400 and "hires_scale" in response.text


def test_hires_and_plain_jobs_never_share_a_pipeline_call():
    plain = GenerationSpec(prompt="a", seed=1, width=64, height=64)
    assert batch_key(plain) != batch_key(GenerationSpec(prompt="a", seed=1, width=64, height=64, hires_scale=2))
    # Without a hires fix its other settings change nothing, so they do not keep jobs apart.
    assert batch_key(plain) == batch_key(GenerationSpec(prompt="b", seed=2, width=64, height=64, hires_strength=0.3))
