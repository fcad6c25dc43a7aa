"""Batching across clients through the real app on the demo model: waiting jobs with the same
settings share one pipeline call, in FIFO order; a cancel inside a batch; ALICE_MAX_BATCH=1."""

from __future__ import annotations

import time

import pytest

from tests.http.conftest import start_client

# Holds the worker while the jobs under test queue up behind it; cancelled once they have.
BLOCKER = {"prompt": "blocker", "width": 256, "height": 256, "steps": 150, "scheduler": "euler"}
SMALL = {"width": 64, "height": 64, "steps": 3, "scheduler": "euler"}


@pytest.fixture(scope="module")
def batch_off_client(tmp_path_factory):
    yield from start_client(tmp_path_factory.mktemp("batch-off"), ALICE_MAX_BATCH="1")


def job(client, job_id: str) -> dict:
    return client.get(f"/v1/jobs/{job_id}").json()


def wait_for(client, job_id: str, states: tuple[str, ...], timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while (record := job(client, job_id))["state"] not in states:
        assert time.monotonic() < deadline, record
        time.sleep(0.02)
    return record


def queue_behind_a_blocker(client, bodies: list[dict]) -> list[str]:
    """Submit `bodies` while a long job runs, then cancel it: they start together afterwards."""
    blocker = client.post("/v1/jobs", json=BLOCKER).json()["id"]
    wait_for(client, blocker, ("running",))
    ids = [client.post("/v1/jobs", json=body).json()["id"] for body in bodies]
    client.delete(f"/v1/jobs/{blocker}")
    return ids


def finished(client, ids: list[str]) -> list[dict]:
    return [wait_for(client, job_id, ("succeeded", "failed", "cancelled")) for job_id in ids]


def test_waiting_jobs_with_the_same_settings_share_one_call(client):
    ids = queue_behind_a_blocker(client, [{"prompt": f"circle {i}", "seed": i, **SMALL} for i in range(3)]
                                 + [{"prompt": "pair", "seed": 9, "num_images": 2, **SMALL}])
    records = finished(client, ids)
    assert [r["state"] for r in records] == ["succeeded"] * 4
    assert [r["batch"] for r in records] == [5] * 4
    assert len({r["started"] for r in records}) == 1 and len({r["generated"] for r in records}) == 1
    assert [len(r["images"]) for r in records] == [1, 1, 1, 2]
    # Every image is its own.
    names = [name for r in records for name in r["images"]]
    assert len({client.get(f"/images/{name}").content for name in names}) == 5


def test_a_job_that_cannot_share_ends_the_batch(client):
    bodies = [{"prompt": "a", "seed": 1, **SMALL}, {"prompt": "x", "seed": 2, **SMALL, "steps": 2},
              {"prompt": "b", "seed": 3, **SMALL}, {"prompt": "c", "seed": 4, **SMALL}]
    a, x, b, c = finished(client, queue_behind_a_blocker(client, bodies))
    # b and c could share a's call, but x came between: a runs alone, then x, then b with c.
    assert [a["batch"], x["batch"], b["batch"], c["batch"]] == [1, 1, 2, 2]
    assert a["generated"] <= x["started"] and x["generated"] <= b["started"] == c["started"]


def test_a_job_cancelled_inside_a_batch_gets_no_image_and_the_others_go_on(client):
    slow = {"width": 64, "height": 64, "steps": 60, "scheduler": "euler"}
    ids = queue_behind_a_blocker(client, [{"prompt": f"slow {i}", "seed": i, **slow} for i in range(3)])
    wait_for(client, ids[1], ("running",))
    deadline = time.monotonic() + 60
    while job(client, ids[1])["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.delete(f"/v1/jobs/{ids[1]}")
    first, cancelled, last = finished(client, ids)
    assert cancelled["state"] == "cancelled" and cancelled["images"] == [] and cancelled["step"] < 60
    for record in (first, last):
        assert record["state"] == "succeeded" and len(record["images"]) == 1 and record["batch"] == 3
        assert record["step"] == record["total_steps"] == 60


def test_a_job_whose_image_comes_out_nan_fails_alone_and_its_batch_mates_get_theirs(client):
    """One client's NaN (fp16 on a GTX 16xx, an unlucky prompt) must not cost the others batched
    with it their images: the text encoder answers NaN for one prompt's row only."""
    import torch
    from transformers import CLIPTokenizer

    from alice.engine.demo import DEMO_MODEL_DIR

    tokenizer = CLIPTokenizer.from_pretrained(DEMO_MODEL_DIR / "tokenizer")
    poisoned = tokenizer("a poisoned circle").input_ids

    def nan_for_that_prompt(module: torch.nn.Module, args: tuple, output) -> None:
        if type(module).__name__ != "CLIPTextModel" or not args:
            return
        for row, ids in enumerate(args[0].tolist()):
            if ids[: len(poisoned)] == poisoned:
                output[0][row] = float("nan")

    bodies = [{"prompt": f"circle {i}", "seed": i, **SMALL} for i in range(2)]
    bodies.insert(1, {"prompt": "a poisoned circle", "seed": 5, **SMALL})
    handle = torch.nn.modules.module.register_module_forward_hook(nan_for_that_prompt)
    try:
        first, poisoned_job, last = finished(client, queue_behind_a_blocker(client, bodies))
    finally:
        handle.remove()
    assert poisoned_job["state"] == "failed" and poisoned_job["error_code"] == "nan_output", poisoned_job
    assert poisoned_job["images"] == [] and "NaN" in poisoned_job["error"]
    for record in (first, last):
        assert record["state"] == "succeeded" and len(record["images"]) == 1 and record["batch"] == 3, record
    assert first["started"] == poisoned_job["started"] == last["started"]  # one call, as batched


def test_batching_off_at_one_each_image_its_own_call(batch_off_client):
    client = batch_off_client
    ids = queue_behind_a_blocker(client, [{"prompt": f"circle {i}", "seed": i, **SMALL} for i in range(2)]
                                 + [{"prompt": "pair", "seed": 9, "num_images": 2, **SMALL}])
    records = finished(client, ids)
    assert [r["batch"] for r in records] == [1, 1, 1]
    assert records[0]["generated"] <= records[1]["started"]
    assert records[2]["total_steps"] == 2 * 3  # its two images one after the other
