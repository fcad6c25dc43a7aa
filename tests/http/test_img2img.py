"""img2img: an input image (base64, data URI, or an ALICE image URL) and a strength, on every route."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

SMALL = {"width": 64, "height": 64, "steps": 8, "scheduler": "ddim", "seed": 3}


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def red() -> Image.Image:
    return Image.new("RGB", (80, 48), (220, 20, 20))


def test_generate_with_an_input_image(client, red):
    """The demo model's VAE is random, so no picture survives it; what can be checked is that
    the input and the strength reach the pipeline and change the result, repeatably."""

    def draw(**extra) -> str:
        response = client.post("/generate", json={"prompt": "a boat", **SMALL, **extra})
        assert response.status_code == 200, response.text
        return response.json()["images"][0]["b64_json"]

    text_only = draw()
    from_red = draw(input_image=png_b64(red), strength=0.5)
    from_blue = draw(input_image=png_b64(Image.new("RGB", (80, 48), (20, 20, 220))), strength=0.5)
    stronger = draw(input_image=png_b64(red), strength=0.9)
    assert len({text_only, from_red, from_blue, stronger}) == 4
    assert pixels(from_red).shape == (64, 64, 3)  # the input is scaled to the asked size
    assert draw(input_image=png_b64(red), strength=0.5) == from_red
    parameters = Image.open(io.BytesIO(base64.b64decode(from_red))).info["parameters"]
    assert "Denoising strength: 0.5" in parameters


def test_data_uri_and_alice_url_inputs_and_same_bytes(client, red):
    uri = "data:image/png;base64," + png_b64(red)
    first = client.post("/generate", json={"prompt": "x", **SMALL, "input_image": uri, "strength": 0.5}).json()
    again = client.post("/generate", json={"prompt": "x", **SMALL, "input_image": png_b64(red), "strength": 0.5}).json()
    assert first["images"][0]["b64_json"] == again["images"][0]["b64_json"]
    url = first["images"][0]["url"]
    chained = client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": "x"}],
        "metadata": {**SMALL, "input_images": [url], "strength": 0.3},
    })
    assert chained.status_code == 200, chained.text
    assert chained.json()["choices"][0]["message"]["metadata"]["img2img"] is True


def test_images_edits_multipart(client, red):
    buffer = io.BytesIO()
    red.save(buffer, format="PNG")
    response = client.post(
        "/v1/images/edits",
        files={"image": ("red.png", buffer.getvalue(), "image/png")},
        data={"prompt": "a boat", "size": "64x64", "n": "2", "response_format": "b64_json", "strength": "0.2",
              "steps": "8", "seed": "3", "scheduler": "ddim"},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2
    assert pixels(data[0]["b64_json"]).shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("not base64 at all!", "must be base64"),
        (base64.b64encode(b"plain text, no image").decode(), "not an image"),
        ("http://192.168.1.1/admin.png", "only images this server made"),
        ("http://testserver/images/" + "0" * 32 + ".png", "only images this server made"),
        ("file:///etc/passwd", "must be base64"),
    ],
)
def test_bad_input_images_are_400(client, value, words):
    response = client.post("/generate", json={"prompt": "x", **SMALL, "input_image": value})
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]
    assert response.json()["detail"][0]["loc"] == ["input_image"]


def test_decompression_bomb_refused_before_decoding(client):
    header = Image.new("1", (30000, 30000))  # 1-bit: a small file that claims 900 megapixels
    buffer = io.BytesIO()
    header.save(buffer, format="PNG")
    response = client.post("/generate", json={"prompt": "x", **SMALL,
                                               "input_image": base64.b64encode(buffer.getvalue()).decode()})
    assert response.status_code == 400
    assert "at most" in response.json()["error"]


def test_edits_needs_an_image_part(client):
    response = client.post("/v1/images/edits", data={"prompt": "x"}, files={"other": ("a.txt", b"x")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "image"


def test_outpainting_widens_the_canvas_and_keeps_the_image(client, red):
    """A border to extend by: the canvas grows by it, the input stays as it was (the blend-back),
    and the border is drawn from the image's edge colours and noise, not left black."""
    response = client.post("/generate", json={"prompt": "a boat", "steps": 3, "scheduler": "ddim", "seed": 3,
                                               "input_image": png_b64(red), "strength": 1.0,
                                               "outpaint": {"right": 16, "bottom": 16}})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["width"], result["height"]) == (96, 64) and result["inpaint"] is True
    drawn = pixels(result["images"][0]["b64_json"])
    assert drawn.shape == (64, 96, 3)
    assert (drawn[:48, :80] == (220, 20, 20)).all()  # the input, every pixel
    border = np.concatenate([drawn[:, 80:].reshape(-1, 3), drawn[48:, :80].reshape(-1, 3)])
    assert np.abs(border - (220, 20, 20)).mean() > 20 and border.std() > 5  # drawn, not a copy or a flat fill
