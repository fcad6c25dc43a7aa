"""A model that draws NaN is a failed job with a clear 500, never a black PNG with a 200: NaN
injected by a forward hook on the real demo UNet, inside the real server."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch

from tests.unit.test_nan_output import nan_of

SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 2}


@contextlib.contextmanager
def unets_answer_nan() -> Iterator[None]:
    """Every UNet in the process answers NaN (the server's pipeline is not reachable from here;
    its UNet is the only one drawing)."""
    from diffusers import UNet2DConditionModel

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        return nan_of(output) if isinstance(module, UNet2DConditionModel) else None

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def wait_for_job(client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while (record := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, record
        time.sleep(0.05)
    return record


def image_files(client) -> set[str]:
    folder = client.data_dir / "images"
    return {str(path) for path in folder.rglob("*") if path.is_file()} if folder.exists() else set()


def test_nan_from_the_model_is_a_500_naming_the_setting_and_no_image_is_kept(client):
    before = image_files(client)
    with unets_answer_nan():
        native = client.post("/generate", json=SMALL)
        chat = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "a red circle"}],
            "metadata": {"width": 64, "height": 64, "steps": 2},
        })
    assert native.status_code == 500 and chat.status_code == 500
    assert native.headers["x-should-retry"] == "false" and chat.headers["x-should-retry"] == "false"
    error = chat.json()["error"]
    assert error["code"] == "nan_output" and error["type"] == "server_error"
    for message in (error["message"], native.json()["error"]):
        assert "alice-demo" in message and "NaN in float32 on the CPU" in message
        assert "ALICE_DTYPE" in message
    assert image_files(client) == before
    assert client.post("/generate", json=SMALL).status_code == 200  # the next request draws


def test_an_async_job_that_draws_nan_fails_with_its_code(client):
    with unets_answer_nan():
        job = client.post("/v1/jobs", json=SMALL)
        assert job.status_code == 202, job.text
        record = wait_for_job(client, job.json()["id"])
    assert record["state"] == "failed" and record["error_code"] == "nan_output" and record["images"] == []
