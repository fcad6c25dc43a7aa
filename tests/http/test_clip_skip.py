"""`clip_skip` on the wire: every route takes it, every answer shows it, the PNG says it."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

pytestmark = pytest.mark.fake_engine  # the wire format, not the pixels (tests/unit/test_clip_skip.py)

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 4}


def test_generate_chat_and_jobs_show_clip_skip_and_the_png_says_it(client):
    body = client.post("/generate", json={"prompt": "a fox", "clip_skip": 2, **SMALL}).json()
    assert body["clip_skip"] == 2
    png = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["b64_json"])))
    assert png.info["parameters"].endswith(", Clip skip: 2")
    job = client.get(f"/v1/jobs/{body['job_id']}").json()
    assert job["parameters"]["clip_skip"] == 2
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "a fox"}],
                                                      "metadata": {"clipSkip": 3, **SMALL}}).json()
    assert chat["choices"][0]["message"]["metadata"]["clip_skip"] == 3
    plain = client.post("/generate", json={"prompt": "a fox", **SMALL}).json()
    assert plain["clip_skip"] is None
    assert "Clip skip" not in Image.open(io.BytesIO(base64.b64decode(plain["images"][0]["b64_json"]))).info["parameters"]


def test_clip_skip_out_of_range_is_a_400_naming_it(client):
    response = client.post("/generate", json={"prompt": "a fox", "clip_skip": 13, **SMALL})
    assert response.status_code == 400
    assert any(d["loc"][-1] == "clip_skip" and "12" in d["msg"] for d in response.json()["detail"])
    response = client.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64", "clip_skip": 0})
    assert response.status_code == 400 and response.json()["error"]["param"] == "clip_skip"


def test_clip_skip_beyond_the_models_text_encoder_is_a_400_before_the_queue(client):
    """The demo's text encoder has 2 layers: clip_skip 3 reads its embeddings, 4 is nothing."""
    assert client.post("/generate", json={"prompt": "a fox", "clip_skip": 3, **SMALL}).status_code == 200
    response = client.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64", "clip_skip": 4})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "clip_skip" and "2 layers" in error["message"] and "at most 3" in error["message"]
    assert client.get("/v1/jobs").json()["data"][0]["parameters"]["clip_skip"] == 3  # nothing queued after
