"""Through the real app and engine: an image that runs out of memory is answered after one retry
in a cheaper layout, the next request goes straight to it, `/health` shows it, the metrics count
it, and out of memory in every layout is the same 503 as before. The card is faked (a large GPU's
DeviceFacts, run on the CPU) and the error injected by a forward pre-hook (tests/unit/test_out_of_memory_layouts.py)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

from tests.http.conftest import start_client
from tests.unit.test_out_of_memory_layouts import BIG_CARD, model_offloaded, out_of_memory_unless

SAM = {"messages": [{"role": "user", "content": "a red circle"}],
       "metadata": {"width": 64, "height": 64, "steps": 2, "seed": 3}}


@pytest.fixture(scope="module")
def fake_card_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from alice.engine.pipelines import DevicePlacement
    from alice.serving import runtime

    with pytest.MonkeyPatch.context() as patch:
        fake_card = DevicePlacement("cpu", torch.float32, BIG_CARD)  # plans for a card, runs on the CPU
        patch.setattr(runtime, "choose_placement", lambda device, dtype: fake_card)
        yield from start_client(tmp_path_factory.mktemp("oom"))


def image_of(client: TestClient, response) -> np.ndarray:
    assert response.status_code == 200, response.text
    [url] = response.json()["choices"][0]["message"]["image_urls"]
    return np.asarray(Image.open(io.BytesIO(client.get(url.split("testserver", 1)[-1]).content)).convert("RGB"))


def escalations(layout: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"model": "alice-demo", "layout": layout}
    return REGISTRY.get_sample_value("alice_out_of_memory_layouts_total", labels) or 0.0


def test_out_of_memory_is_retried_in_a_cheaper_layout_which_is_kept(fake_card_client):
    client = fake_card_client
    counted = escalations("model")
    planned = image_of(client, client.post("/v1/chat/completions", json=SAM))
    assert client.get("/health").json()["out_of_memory_layouts"] == {}
    with out_of_memory_unless(model_offloaded) as refused:
        first = image_of(client, client.post("/v1/chat/completions", json=SAM))
        second = image_of(client, client.post("/v1/chat/completions", json=SAM))
    assert len(refused) == 1  # the second request went straight to the kept layout
    np.testing.assert_array_equal(first, planned)
    np.testing.assert_array_equal(second, planned)
    health = client.get("/health").json()
    [kept] = health["out_of_memory_layouts"]["alice-demo"]
    assert kept["from_size"] == "64x64" and kept["layout"] == "model" and kept["cpu_offload"] == "model"
    assert health["memory_preset"]["sd15"]["cpu_offload"] == "none"  # the plan itself is unchanged
    assert escalations("model") == counted + 1  # on BentoML's /metrics (tests/e2e read it there)


def test_out_of_memory_in_every_layout_is_the_same_503_as_before(fake_card_client):
    client = fake_card_client
    with out_of_memory_unless(lambda module: False, "CLIPTextModel") as refused:
        answers = [client.post("/v1/chat/completions", json=SAM) for _ in range(2)]
    assert len(refused) == 3  # model, then sequential; then sequential alone: the cheapest
    for response in answers:
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "out_of_memory" and "smaller size" in error["message"]
    [kept] = client.get("/health").json()["out_of_memory_layouts"]["alice-demo"]
    assert kept["layout"] == "sequential"
