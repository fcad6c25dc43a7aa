"""Property-based: whatever JSON reaches a generation route, the answer is never a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The wire format is the point here, not the pixels: a fake engine draws (tests/fake_engine.py).
pytestmark = pytest.mark.fake_engine

FIELDS = ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "seed", "scheduler", "model",
          "num_images", "strength", "loras", "input_image", "size", "n", "metadata", "messages", "stream"]
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8),
                                                                 inner, max_size=4),
    max_leaves=8,
)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6)
# Keep generations tiny when a random body happens to be valid.
SMALL = {"width": 64, "height": 64, "steps": 1}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, route=st.sampled_from(["/generate", "/v1/chat/completions", "/v1/images/generations"]))
def test_random_bodies_never_crash_the_server(client, body, route):
    if isinstance(body.get("metadata"), dict):
        body["metadata"] = {**body["metadata"], **SMALL}
    body = {**body, **SMALL} if route == "/generate" else body
    # NaN and Infinity as JavaScript and Python write them: not JSON, but clients send them.
    response = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    # No 503 either: one request at a time never fills the queue, and the fake engine never runs
    # out of memory, so a 503 here would be an error dressed as "busy".
    assert response.status_code < 500, (body, response.status_code, response.text)
