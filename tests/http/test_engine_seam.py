"""The seam tests use: a start handed an engine (ServiceSetup.serving_with) draws with it."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.fake_engine


def test_the_service_draws_with_the_engine_it_was_handed(client):
    calls = len(client.engine.calls)
    response = client.post("/generate", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 150,
                                              "num_images": 3, "seed": 1})
    assert response.status_code == 200, response.text
    assert client.engine.calls[calls:] == [3]  # one call for the three images, as the real engine batches
    assert client.get("/health").json()["loaded_models"] == ["alice-demo"]


def test_the_fake_engine_has_every_method_of_the_engine_interface():
    from alice.engine.engine import Engine
    from tests.fake_engine import FakeEngine

    wanted = {name for name in vars(Engine) if not name.startswith("_")}
    assert wanted and wanted <= set(dir(FakeEngine))
