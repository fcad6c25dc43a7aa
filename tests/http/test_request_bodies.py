"""Big and odd request bodies: bounded before they are read, taken in off the event loop,
refused in the OpenAI envelope, and never logged with what the client sent."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time

import pytest
from PIL import Image

from alice.http.request_bodies import MAX_BODY_BYTES
from alice.protocol.input_images import MAX_INPUT_BYTES, MAX_INPUT_PIXELS
from tests.http.conftest import errors_logged, server_log

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

SMALL = {"width": 64, "height": 64, "steps": 2, "strength": 0.5}  # img2img runs steps x strength


def big_input_jpeg() -> bytes:
    """A 4096x4096 input, the most pixels ALICE takes: noise, so its PNG copy takes seconds to encode."""
    side = int(MAX_INPUT_PIXELS**0.5)
    noise = Image.effect_noise((side, side), 40)
    gradient = Image.linear_gradient("L").resize((side, side))
    image = Image.merge("RGB", [noise, gradient, noise.transpose(Image.Transpose.ROTATE_90)])
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def test_the_body_limit_fits_the_biggest_legitimate_body():
    """An input image at its limit, as base64 in JSON, with room for the settings."""
    assert len(base64.b64encode(b"\0" * MAX_INPUT_BYTES)) + (1 << 20) < MAX_BODY_BYTES


def test_health_answers_while_big_inputs_are_taken_in(client):
    """Decoding, re-encoding and fsyncing two 4096x4096 inputs (native and OpenAI routes)
    must not hold the event loop: `/health` keeps answering within a second."""
    data = big_input_jpeg()
    answers: list[int] = []
    posts = [
        threading.Thread(target=lambda: answers.append(client.post("/generate", json={
            "prompt": "x", **SMALL, "input_image": base64.b64encode(data).decode()}).status_code)),
        threading.Thread(target=lambda: answers.append(client.post(
            "/v1/images/edits", files={"image": ("big.jpg", data, "image/jpeg")},
            data={"prompt": "x", "size": "64x64", "steps": "2", "strength": "0.5"}).status_code)),
    ]
    for post in posts:
        post.start()
    worst = 0.0
    while any(post.is_alive() for post in posts):
        started = time.monotonic()
        assert client.get("/health").status_code == 200
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    assert answers == [200, 200]
    assert worst < 1.0, f"/health took {worst:.2f} s while the inputs were taken in"


@pytest.mark.parametrize("path", ["/generate", "/v1/chat/completions", "/v1/images/edits", "/v1/jobs"])
def test_a_body_over_the_limit_is_a_413_naming_it(client, path):
    response = client.post(path, content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "body_too_large" and error["type"] == "invalid_request_error"
    assert f"{MAX_BODY_BYTES // (1 << 20)} MiB" in error["message"]
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize("content_type", [
    "multipart/form-data",  # no boundary: BentoML's form parser failed with a 500
    "multipart/form-data; boundary=xyz",
    "application/x-www-form-urlencoded",
])
def test_generate_takes_json_only(client, content_type):
    response = client.post("/generate", content=b"--xyz\r\ngarbage\r\n\r\nx\r\n--xyz--\r\n",
                           headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert "application/json" in response.json()["error"]["message"]


def test_a_rejected_generate_body_is_not_logged(client):
    """BentoML logged the rejected body (prompt and all) at ERROR with a traceback."""
    with server_log() as records:
        response = client.post("/generate", content=b'{"prompt": "a secret lighthouse", "steps": }',
                               headers={"content-type": "application/json"})
        assert response.status_code == 400
        response = client.post("/generate", json={"prompt": "a secret lighthouse", "steps": "many"})
        assert response.status_code == 400 and response.json()["detail"][0]["loc"] == ["steps"]
    assert "secret lighthouse" not in "\n".join(logging.Formatter().format(record) for record in records)
    assert errors_logged(records) == []
