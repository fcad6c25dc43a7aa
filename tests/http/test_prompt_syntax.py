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


def test_an_embeddings_vectors_count_towards_the_limit_and_one_of_another_family_is_noted(client, tmp_path):
    """A1111 reads an embedding of N vectors as N tokens: the 8-chunk limit counts them (a name of
    one word that takes 20 tokens), and an embedding of another family named in a prompt is
    skipped with a note naming it and its family."""
    import torch
    from safetensors.torch import save_file

    from alice.models import checkpoints, store as model_store

    files = {"wide20": torch.randn(20, 64), "sdone": torch.randn(2, 768)}  # the demo's CLIP is 64 wide
    for name, vectors in files.items():
        save_file({"emb_params": vectors}, str(tmp_path / f"{name}.safetensors"))
        checkpoints.import_embedding_file(tmp_path / f"{name}.safetensors", name)
    try:
        # The demo reads 8 chunks of 14 tokens (112); "red" is one token, the embedding 20.
        near = client.post("/generate", json={"prompt": " ".join(["red"] * 90) + " wide20", **SMALL})
        assert near.status_code == 200, near.text
        assert near.json()["prompt_notes"] == []
        over = client.post("/generate", json={"prompt": " ".join(["red"] * 93) + " wide20", **SMALL})
        assert over.status_code == 400, over.text
        assert "prompt is 113 tokens in 9 chunks" in over.json()["error"], over.text
        assert client.post("/generate", json={"prompt": " ".join(["red"] * 93) + " wide", **SMALL}).status_code == 200
        noted = client.post("/generate", json={"prompt": "a circle", "negative_prompt": "(SDone:1.2), blurry", **SMALL})
        assert noted.status_code == 200, noted.text
        assert noted.json()["prompt_notes"] == [
            "negative_prompt: the embedding 'sdone' is for sd15 models (vectors 768 wide) and this model's text "
            "encoders are 64 wide: skipped, its name read as words"]
    finally:
        for name in files:
            model_store.delete_model(name)
