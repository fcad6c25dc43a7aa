"""The trained demo model draws what the prompt asks, through the HTTP API.

Held-out colour/shape/background combinations (never in its training data) go in as SAM's
chat completion and as `/generate`; the pictures that come back are judged by their pixels.
The bounds sit below what the shipped model was measured to draw on these requests (the
evaluation's numbers are in the README), but a prompt that never reached the model would
land near one combination in 56 and fail them, and a model that drew every shape the same
would fail the shape's.

The requests go in eight at a time, as clients' would: the queue batches them (ALICE_MAX_BATCH
8), as they are drawn in service.
"""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from alice.demo_training.judge import judge
from alice.demo_training.shapes import evaluation_prompts
from tests.http.test_sam_contract import fetch_png

PROMPTS = evaluation_prompts()
CHECKS = {
    "both colours": lambda scene, verdict: verdict.colours_right(scene),
    "shape": lambda scene, verdict: verdict.shape == scene.shape,
}


def _assert_mostly_right(pictures, at_least: dict[str, float]) -> None:
    """`at_least`: the share of the pictures that must pass each named check."""
    verdicts = [(scene, prompt, judge(image, scene)) for scene, prompt, image in pictures]
    for name, bound in at_least.items():
        wrong = [f"{prompt!r} -> {verdict}" for scene, prompt, verdict in verdicts if not CHECKS[name](scene, verdict)]
        share = 1 - len(wrong) / len(verdicts)
        assert share >= bound, f"{name}: {share:.0%} right; wrong: {wrong}"


def _in_parallel(draw, work: list) -> list:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(draw, work))


def test_sam_chat_completions_draw_the_asked_picture(client):
    def draw(item):
        seed, (scene, prompt) = item
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": "sd/alice-demo",
                "messages": [{"role": "user", "content": prompt}],
                # SAM's defaults (the contract) at the demo's native size
                "metadata": {"steps": 25, "guidance_scale": 7.5, "scheduler": "ddim", "width": 64, "height": 64,
                             "seed": seed},
            },
        )
        assert response.status_code == 200, response.text
        [url] = response.json()["choices"][0]["message"]["image_urls"]
        return scene, prompt, fetch_png(client, url)

    # the middle of the picture, default size
    pictures = _in_parallel(draw, list(enumerate(PROMPTS[0:48:2])))
    # measured with the shipped model: both colours 24 of 24, shape 20 of 24 (with DDIM, SAM's
    # sampler; the previous model drew 11 shapes right, every shape the same would get 8)
    _assert_mostly_right(pictures, {"both colours": 0.95, "shape": 0.70})


def test_generate_draws_the_asked_picture_with_the_default_sampler(client):
    def draw(item):
        seed, (scene, prompt) = item
        response = client.post("/generate", json={"prompt": prompt, "width": 64, "height": 64, "seed": seed})
        assert response.status_code == 200, response.text
        png = base64.b64decode(response.json()["images"][0]["b64_json"])
        return scene, prompt, Image.open(io.BytesIO(png))

    # sizes, places and every phrasing vary
    pictures = _in_parallel(draw, list(enumerate(PROMPTS[1:48:2] + PROMPTS[48:])))
    # measured with the shipped model: both colours 72 of 72, shape 60 of 72 (83%, small shapes
    # included); the previous model drew 47 shapes right (65%), the first release 41 (57%), a
    # model that drew every shape the same would get 24
    _assert_mostly_right(pictures, {"both colours": 0.95, "shape": 0.75})
