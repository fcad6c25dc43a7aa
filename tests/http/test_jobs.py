"""The queue seen through HTTP: full queue = 503 + Retry-After, cancel queued and running jobs."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.http.conftest import start_fake_client, wait_for_state

# Long enough to still be running while the test looks at it; cancelled long before the end.
SLOW = {"model": "sd/alice-demo", "messages": [{"role": "user", "content": "slow"}],
        "metadata": {"width": 256, "height": 256, "steps": 150, "scheduler": "euler"}}


@pytest.fixture(scope="module")
def small_queue_client(tmp_path_factory):
    # The queue's shapes, not the pixels: a fake engine whose 150 steps take 15 s.
    yield from start_fake_client(tmp_path_factory.mktemp("queue"), step_seconds=0.1, ALICE_QUEUE_SIZE="1")


def test_full_queue_then_cancel_queued_and_running(small_queue_client):
    client = small_queue_client
    with ThreadPoolExecutor(2) as pool:
        running_call = pool.submit(client.post, "/v1/chat/completions", json=SLOW)
        [running] = wait_for_state(client, "running")
        queued_call = pool.submit(client.post, "/chat/completions", json=SLOW)
        [queued] = wait_for_state(client, "queued")

        # One running, one waiting, room for one waiting: the next is turned away.
        refused = client.post("/v1/chat/completions", json=SLOW)
        assert refused.status_code == 503
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "queue_full"
        assert "x-should-retry" not in refused.headers  # a retry later can succeed

        health = client.get("/health").json()
        assert health["queue"] == {"waiting": 1, "running": 1}

        # Progress moves while it runs.
        first = client.get(f"/v1/jobs/{running['id']}").json()["step"]
        deadline = time.monotonic() + 30
        while client.get(f"/v1/jobs/{running['id']}").json()["step"] <= first:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.05)

        # Cancelling the queued job touches only it.
        cancelled = client.delete(f"/v1/jobs/{queued['id']}").json()
        assert cancelled["state"] == "cancelled"
        response = queued_call.result(timeout=10)
        assert response.status_code == 409
        assert response.json()["error"]["type"] == "cancelled"
        assert client.get(f"/v1/jobs/{running['id']}").json()["state"] == "running"

        # A running job stops at its next step; its client gets an error, never an image.
        client.delete(f"/v1/jobs/{running['id']}")
        response = running_call.result(timeout=10)
        assert response.status_code == 409
        record = client.get(f"/v1/jobs/{running['id']}").json()
        assert record["state"] == "cancelled" and record["images"] == []
        assert record["step"] < 150

    # And the server carries on.
    ok = client.post("/generate", json={"prompt": "after", "width": 64, "height": 64, "steps": 2})
    assert ok.status_code == 200


def test_jobs_list_newest_first_and_unknown_job(small_queue_client):
    client = small_queue_client
    for prompt in ("one", "two"):
        client.post("/generate", json={"prompt": prompt, "width": 64, "height": 64, "steps": 1})
    jobs = client.get("/v1/jobs").json()["data"]
    assert [job["parameters"]["prompt"] for job in jobs[:2]] == ["two", "one"]
    assert jobs[0]["state"] == "succeeded" and jobs[0]["progress"] == 1.0 and len(jobs[0]["images"]) == 1
    assert client.get("/v1/jobs/job-nope").status_code == 404
    assert client.delete("/v1/jobs/job-nope").status_code == 404
