"""A realistic mix against a running ALICE: SAM's chat completions, the Images API, health polls,
the model list. The only acceptable failure is a 503 with Retry-After when the queue is full.

    .venv/bin/locust -f load_tests/locustfile.py --headless -H http://127.0.0.1:3000 \
        -u 8 -r 2 --run-time 10m          # ALICE_LOAD_KEY=... when the server has keys

Sizes and steps are small by default (the demo model); ALICE_LOAD_SIZE / ALICE_LOAD_STEPS change them.
"""

from __future__ import annotations

import os
import random

from locust import HttpUser, between, task

KEY = os.environ.get("ALICE_LOAD_KEY", "")
SIZE = int(os.environ.get("ALICE_LOAD_SIZE", "64"))
STEPS = int(os.environ.get("ALICE_LOAD_STEPS", "4"))
PROMPTS = ["a lighthouse at dusk", "a red bicycle", "東京の夜景", "a cat <b>in</b> a hat", "🐱 on the moon"]


class SamLikeUser(HttpUser):
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        if KEY:
            self.client.headers["X-Api-Key"] = KEY

    def _check(self, response) -> None:
        if response.status_code == 200:
            response.success()
        elif response.status_code == 503 and response.headers.get("Retry-After"):
            response.success()  # busy is an answer SAM understands
        else:
            response.failure(f"HTTP {response.status_code}: {response.text[:200]}")

    @task(6)
    def sam_chat_completion(self) -> None:
        body = {"model": "sd/alice-demo", "messages": [{"role": "user", "content": random.choice(PROMPTS)}],
                "metadata": {"steps": STEPS, "guidance_scale": 7.5, "scheduler": "ddim", "width": SIZE,
                             "height": SIZE, "seed": random.randrange(2**32)}}
        with self.client.post("/chat/completions", json=body, catch_response=True, timeout=600) as response:
            self._check(response)
            if response.status_code == 200:
                url = response.json()["choices"][0]["message"]["image_urls"][0]
                image = self.client.get(url.split("/images/", 1)[1].join(["/images/", ""]), name="/images/[name]")
                if image.status_code != 200 or image.headers.get("content-type") != "image/png":
                    response.failure(f"image URL answered {image.status_code}")

    @task(2)
    def images_api(self) -> None:
        body = {"prompt": random.choice(PROMPTS), "size": f"{SIZE}x{SIZE}", "steps": STEPS,
                "response_format": random.choice(["url", "b64_json"])}
        with self.client.post("/v1/images/generations", json=body, catch_response=True, timeout=600) as response:
            self._check(response)

    @task(4)
    def health(self) -> None:
        with self.client.get("/health", catch_response=True, timeout=10) as response:
            self._check(response)

    @task(1)
    def models(self) -> None:
        with self.client.get("/v1/models", catch_response=True, timeout=30) as response:
            self._check(response)
