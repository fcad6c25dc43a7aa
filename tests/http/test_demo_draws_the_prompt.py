"""The trained demo model draws what the prompt asks, through the HTTP API.

Held-out colour/shape/background combinations (never in its training data) go in as SAM's
chat completion and as `/generate`; the pictures that come back are judged by their pixels.
The bound is loose (the measured accuracy is in the README), but a prompt that never reached
the model would land near one combination in 56 and fail it.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from alice.demo_training.judge import judge
from alice.demo_training.shapes import evaluation_scenes
from tests.http.test_sam_contract import fetch_png

SCENES = evaluation_scenes()
AT_LEAST = 2 / 3  # of the pictures must have both the shape's and the background's colour right


def _share_right(pictures) -> float:
    verdicts = [(scene, judge(image, scene)) for scene, image in pictures]
    wrong = [f"{scene.caption()!r} -> {verdict}" for scene, verdict in verdicts if not verdict.colours_right(scene)]
    share = 1 - len(wrong) / len(verdicts)
    assert share >= AT_LEAST, f"{share:.0%} right; wrong: {wrong}"
    return share


def test_sam_chat_completions_draw_the_asked_colours(client):
    pictures = []
    for seed, scene in enumerate(SCENES[::2]):  # the half in the middle of the picture
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "sd/alice-demo",
                "messages": [{"role": "user", "content": scene.caption()}],
                # SAM's defaults (the contract) at the demo's native size
                "metadata": {"steps": 25, "guidance_scale": 7.5, "scheduler": "ddim", "width": 64, "height": 64,
                             "seed": seed},
            },
        )
        assert response.status_code == 200, response.text
        [url] = response.json()["choices"][0]["message"]["image_urls"]
        pictures.append((scene, fetch_png(client, url)))
    _share_right(pictures)


def test_generate_draws_the_asked_colours_with_the_default_sampler(client):
    pictures = []
    for seed, scene in enumerate(SCENES[1::2]):  # sizes and places vary
        response = client.post("/generate", json={"prompt": scene.caption(), "width": 64, "height": 64, "seed": seed})
        assert response.status_code == 200, response.text
        png = base64.b64decode(response.json()["images"][0]["b64_json"])
        pictures.append((scene, Image.open(io.BytesIO(png))))
    _share_right(pictures)
