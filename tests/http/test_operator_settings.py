"""Settings an operator sets: a public base URL for image URLs, the retention sweep."""

from __future__ import annotations

import os
import time

import pytest

from tests.http.conftest import start_fake_client


@pytest.fixture(scope="module")
def proxied_client(tmp_path_factory):
    yield from start_fake_client(
        tmp_path_factory.mktemp("operator"),
        ALICE_PUBLIC_URL="https://images.example.org/alice/",
        ALICE_RETENTION_SWEEP_INTERVAL_S="1",
        ALICE_IMAGE_RETENTION_DAYS="1",
    )


def test_public_url_overrides_request_headers(proxied_client):
    response = proxied_client.post(
        "/v1/chat/completions",
        headers={"X-Forwarded-Host": "ignored.example.net"},
        json={"messages": [{"role": "user", "content": "x"}], "metadata": {"width": 64, "height": 64, "steps": 1}},
    )
    [url] = response.json()["choices"][0]["message"]["image_urls"]
    assert url.startswith("https://images.example.org/alice/images/")


def test_retention_sweep_removes_images_past_their_age(proxied_client):
    body = proxied_client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 1}).json()
    fresh = body["images"][0]["name"]
    old = proxied_client.post("/generate", json={"prompt": "y", "width": 64, "height": 64, "steps": 1}).json()
    old_name = old["images"][0]["name"]
    path = proxied_client.data_dir / "images" / old_name
    two_days_ago = time.time() - 2 * 86400
    os.utime(path, (two_days_ago, two_days_ago))
    # The sweep runs every second; the bound only ends the wait if it never runs at all,
    # so it is generous for a loaded machine (the age rule itself is unit-tested with `now=`).
    deadline = time.monotonic() + 120
    while proxied_client.get(f"/images/{old_name}").status_code == 200:
        assert time.monotonic() < deadline, "the sweep never ran"
        time.sleep(0.1)
    assert proxied_client.get(f"/images/{old_name}").status_code == 404
    assert proxied_client.get(f"/images/{fresh}").status_code == 200
