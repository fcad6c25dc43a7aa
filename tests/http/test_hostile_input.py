"""Whatever a client sends, the answer is a clear 4xx, never a 500, and the server stays healthy."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image, PngImagePlugin

from tests.http.conftest import errors_logged, server_log

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}


def png_with_huge_text_chunk() -> bytes:
    """A small PNG whose compressed text chunk inflates to 2 MB, past Pillow's MAX_TEXT_CHUNK."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "x" * (2 << 20), zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


DEEP = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # Python's json module: RecursionError
TEXT_BOMB = base64.b64encode(png_with_huge_text_chunk()).decode()

CASES = [
    ("/generate", b"{not json"),
    ("/generate", b"[]"),
    ("/generate", b'"a string"'),
    ("/generate", b"null"),
    ("/generate", b'{"prompt": 5}'),
    ("/generate", b'{"prompt": "x", "width": 1e400}'),
    ("/generate", b'{"prompt": "x", "width": 99999999999999999999999999}'),
    ("/generate", b'{"prompt": "x", "seed": Infinity}'),
    ("/generate", b'{"prompt": "x", "num_images": -1}'),
    ("/generate", b'{"prompt": "x", "model": "../../../../etc/passwd"}'),
    ("/generate", b'{"prompt": "x", "scheduler": ["ddim"]}'),  # null is the model family's default
    ("/generate", b'{"prompt": "\\u0000\\ud800"}'),
    (CHAT, b"{}"),
    (CHAT, b'{"messages": "hello"}'),
    (CHAT, b'{"messages": [{"role": "user", "content": [1, 2]}]}'),
    (CHAT, b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'),
    (CHAT, b'{"messages": [{"role": "user", "content": {"text": "x"}}]}'),
    (CHAT, b'{"messages": [{"content": "no role"}]}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "metadata": "steps=4"}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"seed": 1.5}}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"width": [64]}}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"size": "9999999x1"}}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"num_images": 1000}}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "model": 42}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "stream": "maybe"}'),
    (CHAT, b'{"messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'),
    (CHAT, b"\xff\xfe\xfd"),
    ("/v1/images/generations", b'{"prompt": "x", "n": 0}'),
    ("/v1/images/generations", b'{"prompt": "x", "n": 100}'),
    ("/v1/images/generations", b'{"prompt": "x", "size": 512}'),
    ("/v1/images/generations", b'{"size": "64x64"}'),
    ("/generate", DEEP),
    (CHAT, DEEP),
    ("/v1/images/generations", DEEP),
    ("/v1/jobs", DEEP),
    ("/v1/models/download/url", DEEP),
    ("/generate", json.dumps({"prompt": "x", "input_image": TEXT_BOMB}).encode()),
    (CHAT, json.dumps({"messages": [{"role": "user", "content": "x"}],
                       "metadata": {"input_images": [TEXT_BOMB]}}).encode()),
]


@pytest.mark.parametrize(("path", "body"), CASES, ids=[f"{p}:{b[:40]!r}" for p, b in CASES])
def test_bad_input_is_a_clear_4xx(client, path, body):
    response = client.post(path, content=body, headers=JSON)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.json()["error"]


def test_bad_input_leaves_no_traceback_in_the_log(client):
    """A client's mistake is answered, not logged as a server error (with what it sent)."""
    with server_log() as records:
        for path, body in CASES:
            client.post(path, content=body, headers=JSON)
        client.post("/v1/images/edits", files={"image": ("bomb.png", base64.b64decode(TEXT_BOMB))},
                    data={"prompt": "x"})
    assert errors_logged(records) == []


def test_an_upload_with_a_huge_text_chunk_is_a_400(client):
    response = client.post("/v1/images/edits", files={"image": ("bomb.png", base64.b64decode(TEXT_BOMB))},
                           data={"prompt": "x"})
    assert response.status_code == 400, response.text
    assert "MAX_TEXT_CHUNK" in response.json()["error"]["message"]


def test_server_is_healthy_after_the_barrage(client):
    for path, body in CASES:
        client.post(path, content=body, headers=JSON)
    assert client.get("/health").json()["status"] == "ok"
    ok = client.post("/generate", json={"prompt": "still fine", "width": 64, "height": 64, "steps": 1})
    assert ok.status_code == 200


def test_oversized_bodies_and_uploads_are_refused(client):
    huge = b"x" * (33 << 20)
    response = client.post("/v1/chat/completions", content=huge, headers=JSON)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    response = client.post("/v1/images/edits", files={"image": ("big.png", b"\x89PNG" + b"0" * (22 << 20))},
                           data={"prompt": "x"})
    assert response.status_code == 413 and response.json()["error"]["param"] == "image"
    assert client.get("/health").json()["status"] == "ok"


# Masks (inpainting) as clients send them: refused by name before the queue when they do not fit.
def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


IMAGE = encoded(Image.new("RGB", (64, 64), (200, 30, 30)))


def hole(size: tuple[int, int] = (64, 64)) -> Image.Image:
    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (16, 16, 48, 48))
    return mask


def edit(client, mask: bytes | None, image: bytes = IMAGE, **fields: str):
    files = {"image": ("image.png", image, "image/png")}
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    return client.post("/v1/images/edits", files=files,
                       data={"prompt": "a boat", "size": "64x64", "steps": "2", **fields})


@pytest.mark.parametrize(("mask", "words"), [
    (encoded(hole((32, 64))), "mask is 32x64 and the image 64x64: they must be the same size"),
    (encoded(Image.new("RGB", (64, 64))), "without an alpha channel"),
    (encoded(hole().convert("RGB"), "JPEG"), "mask must be a PNG"),
    (encoded(Image.new("RGBA", (64, 64), (0, 0, 0, 255))), "no fully transparent pixel"),
    (b"not an image", "not an image"),
])
def test_a_mask_that_does_not_fit_the_image_is_a_400_naming_mask(client, mask, words):
    response = edit(client, mask)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "mask" and words in error["message"], error


def test_a_fitting_mask_or_a_transparent_image_is_a_masked_edit(client):
    for mask, image in ((encoded(hole()), IMAGE), (None, encoded(hole()))):  # no mask: the image's own alpha
        response = edit(client, mask, image, response_format="b64_json")
        assert response.status_code == 200, response.text
    jobs = client.get("/v1/jobs").json()["data"]
    assert [job["parameters"]["mask_image"] is not None for job in jobs[:2]] == [True, True]


def test_mask_and_outpaint_need_an_input_image_and_the_extended_canvas_is_the_default_size(client):
    for body, param in (({"mask": "AAAA"}, "mask"), ({"outpaint": {"right": 16}}, "outpaint")):
        response = client.post("/generate", json={"prompt": "x", **body})
        assert response.status_code == 400 and response.json()["detail"][0]["loc"] == [param], response.text
    response = client.post("/generate", json={
        "prompt": "x", "steps": 2, "input_image": base64.b64encode(IMAGE).decode(),
        "outpaint": {"left": 8, "right": 24, "top": 0, "bottom": 16},
    })
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (96, 80)
    assert response.json()["inpaint"] is True
    response = client.post("/generate", json={"prompt": "x", "input_image": "AAAA", "outpaint": {"left": -8}})
    assert response.status_code == 400
