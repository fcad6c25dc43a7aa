"""A job past its deadline is stopped at the next step and fails clearly (cf. bentoml#5642)."""

from __future__ import annotations

import time

import pytest

from tests.http.conftest import start_client
from tests.http.test_jobs import SLOW


@pytest.fixture(scope="module")
def short_deadline_client(tmp_path_factory):
    yield from start_client(tmp_path_factory.mktemp("deadline"), ALICE_REQUEST_TIMEOUT_S="3")


def test_deadline_stops_a_generation(short_deadline_client):
    client = short_deadline_client
    started = time.monotonic()
    response = client.post("/v1/chat/completions", json=SLOW)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert response.headers["x-should-retry"] == "false"
    assert time.monotonic() - started < 20  # the job alone would take far longer
    [job] = client.get("/v1/jobs").json()["data"]
    assert job["state"] == "failed" and job["images"] == [] and job["step"] < 150
    # Nothing keeps running beside the next request: the worker is free at once.
    assert client.get("/health").json()["queue"] == {"waiting": 0, "running": 0}
    quick = client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 1})
    assert quick.status_code == 200
