"""A1111 prompt syntax on the wire: weighted prompts are taken as written, a prompt past what the
model reads is a 400 naming the limit before the queue, embeddings are listed beside the models."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

pytestmark = pytest.mark.fake_engine  # the wire format; the pixels: tests/unit/test_prompt_embeds.py

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 4}


def test_weighted_prompt_is_drawn_and_written_as_given(client):
    prompt = "a (red:1.3) circle, [blurry] BREAK ((blue)) background \\(x\\)"
    body = client.post("/generate", json={"prompt": prompt, "negative_prompt": "(ugly:1.2)", **SMALL}).json()
    assert body["prompt"] == prompt and body["prompt_notes"] == []
    png = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["b64_json"])))
    assert png.info["parameters"].startswith(prompt + "\nNegative prompt: (ugly:1.2)\n")


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_past_what_the_model_reads_is_refused_naming_the_limit(client, field):
    # The demo's CLIP reads 14 tokens a chunk: 8 chunks are 112 tokens; "red" is one token.
    body = {"prompt": "a circle", **SMALL, field: " ".join(["red"] * 120)}
    response = client.post("/generate", json=body)
    assert response.status_code == 400, response.text
    assert field in response.text and "at most 8 chunks of 14 tokens (112 tokens)" in response.text
    assert client.post("/generate", json={**body, field: " ".join(["red"] * 100)}).status_code == 200


def test_models_list_names_the_embeddings_apart(client):
    listed = client.get("/v1/models").json()
    assert listed["embeddings"] == [] and all(m["id"].startswith("sd/") for m in listed["data"])
