"""API keys: Bearer and X-Api-Key, several keys, open routes stay open."""

from __future__ import annotations

import itertools
import re

import pytest

from tests.http.conftest import API_KEY, OTHER_KEY

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

GENERATE = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "seed": 1}
CHAT = {"model": "sd/alice-demo", "messages": [{"role": "user", "content": "a cat"}],
        "metadata": {"width": 64, "height": 64, "steps": 2}}

PROTECTED = [
    ("GET", "/v1/models", None),
    ("GET", "/models", None),
    ("GET", "/v1/models/sd/alice-demo", None),
    ("GET", "/v1/jobs", None),
    ("POST", "/generate", GENERATE),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/chat/completions", CHAT),
    ("POST", "/v1/images/generations", {"prompt": "a cat", "size": "64x64", "steps": 2}),
    ("GET", "/schema.json", None),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"}, {"Authorization": API_KEY},
     {"Authorization": f"Basic {API_KEY}"}, {"X-Api-Key": API_KEY[:-1]}],
    ids=["none", "wrong-bearer", "wrong-x-api-key", "no-scheme", "basic", "prefix"],
)
def test_refused_without_a_valid_key(keyed_client, method, path, body, headers):
    response = keyed_client.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": {
        "message": "a valid API key is required (Authorization: Bearer KEY or X-Api-Key: KEY)",
        "type": "authentication_error", "param": None, "code": "invalid_api_key"}}
    assert response.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {API_KEY}"}, {"X-Api-Key": API_KEY},
                                     {"X-Api-Key": OTHER_KEY}, {"authorization": f"bearer {OTHER_KEY}"}])
def test_accepted_with_any_configured_key(keyed_client, method, path, body, headers):
    response = keyed_client.request(method, path, json=body, headers=headers)
    assert response.status_code == 200, response.text


def test_open_routes_need_no_key(keyed_client):
    for path in ("/health", "/livez", "/readyz", "/healthz"):
        assert keyed_client.get(path).status_code == 200, path
    image = keyed_client.post("/generate", json=GENERATE, headers={"X-Api-Key": API_KEY}).json()["images"][0]
    response = keyed_client.get(f"/images/{image['name']}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


def test_image_names_are_unguessable(keyed_client):
    names = [keyed_client.post("/generate", json={**GENERATE, "num_images": 3},
                               headers={"X-Api-Key": API_KEY}).json()["images"][i]["name"] for i in range(3)]
    assert len(set(names)) == 3
    stems = [name.removesuffix(".png") for name in names]
    assert all(re.fullmatch(r"[0-9a-f]{32}", stem) for stem in stems), stems  # 128 bits, hex
    # Random, not counted or timed: any two names differ in about half their 128 bits (64 on
    # average; under 30 happens once in a billion pairs), where a counter or a clock changes a few.
    for first, second in itertools.combinations(stems, 2):
        assert (int(first, 16) ^ int(second, 16)).bit_count() >= 30, (first, second)
