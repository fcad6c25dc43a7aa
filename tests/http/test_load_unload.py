"""Load and unload models on demand, on the worker, in FIFO order with the generations."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.http.conftest import start_client, wait_for_state

# Long enough to still be running while the test looks at it; cancelled long before the end.
SLOW = {"prompt": "slow", "width": 256, "height": 256, "steps": 150, "scheduler": "euler"}


def test_unload_then_load_the_default_model(client):
    assert client.get("/health").json()["loaded_models"] == ["alice-demo"]
    response = client.post("/v1/models/sd/alice-demo/unload")
    assert response.status_code == 200 and response.json()["was_loaded"] is True
    assert client.get("/health").json()["loaded_models"] == []
    response = client.post("/v1/models/sd/alice-demo/unload")  # stored but not loaded: nothing to do
    assert response.status_code == 200 and response.json()["was_loaded"] is False
    response = client.post("/v1/models/sd/alice-demo/load")
    assert response.status_code == 200 and response.json()["loaded_models"] == ["alice-demo"]
    assert client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 1}).status_code == 200


def test_unknown_models(client):
    for action in ("load", "unload"):
        response = client.post(f"/v1/models/sd/nope/{action}")
        assert response.status_code == 404, (action, response.text)
        assert response.json()["error"]["code"] == "model_not_found" and "nope" in response.json()["error"]["message"]
    assert client.post("/v1/models/..%2Fx/load").status_code in (400, 404)
    assert client.post("/v1/models/..%2Fx/unload").status_code in (400, 404)


@pytest.fixture(scope="module")
def small_queue_client(tmp_path_factory):
    yield from start_client(tmp_path_factory.mktemp("queue"), ALICE_QUEUE_SIZE="2")


def test_load_and_unload_wait_their_turn_and_count_against_the_queue(small_queue_client):
    client = small_queue_client
    with ThreadPoolExecutor(3) as pool:
        running_call = pool.submit(client.post, "/generate", json=SLOW)
        [running] = wait_for_state(client, "running")
        queued_call = pool.submit(client.post, "/generate", json=SLOW)
        [queued] = wait_for_state(client, "queued")
        unload_call = pool.submit(client.post, "/v1/models/sd/alice-demo/unload")
        deadline = time.monotonic() + 10
        while client.get("/health").json()["queue"]["waiting"] < 2:  # the unload waits in line too
            assert time.monotonic() < deadline, client.get("/health").json()
            time.sleep(0.05)

        # Two waiting (a job and the unload) is the bound: loads and unloads are refused like jobs.
        for action in ("load", "unload"):
            refused = client.post(f"/v1/models/sd/alice-demo/{action}")
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"]["code"] == "queue_full"

        # The unload does not jump ahead of the job queued before it.
        client.delete(f"/v1/jobs/{running['id']}")
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{queued['id']}").json()["state"] != "running":
            assert not unload_call.done(), "the unload ran before the job queued ahead of it"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not unload_call.done()
        client.delete(f"/v1/jobs/{queued['id']}")
        unloaded = unload_call.result(timeout=30)
        assert unloaded.status_code == 200 and unloaded.json()["was_loaded"] is True
        assert running_call.result(timeout=10).status_code == 409
        assert queued_call.result(timeout=10).status_code == 409
    assert client.post("/v1/models/sd/alice-demo/load").status_code == 200
