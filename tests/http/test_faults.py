"""Faults inside a generation: a clear answer, nothing half-done left behind, the next request works."""

from __future__ import annotations

import torch

from alice.engine import engine as engine_module

SAM = {"messages": [{"role": "user", "content": "x"}], "metadata": {"width": 64, "height": 64, "steps": 2}}


def fail_once(monkeypatch, error: Exception) -> None:
    real = engine_module.run_batch

    def failing(*args, **kwargs):
        monkeypatch.setattr(engine_module, "run_batch", real)
        raise error

    monkeypatch.setattr(engine_module, "run_batch", failing)


def test_out_of_memory_is_a_clear_503_and_the_next_request_works(client, monkeypatch):
    # No GPU here: the CUDA error is raised where the pipeline would raise it.
    fail_once(monkeypatch, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    response = client.post("/v1/chat/completions", json=SAM)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "out_of_memory" and "smaller size" in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert client.post("/v1/chat/completions", json=SAM).status_code == 200


def test_a_generation_that_raises_is_a_500_without_internals(client, monkeypatch):
    fail_once(monkeypatch, RuntimeError("secret internal detail at /opt/weights"))
    response = client.post("/v1/chat/completions", json=SAM)
    assert response.status_code == 500
    assert "secret" not in response.text and response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-should-retry"] == "false"
    assert client.post("/v1/chat/completions", json=SAM).status_code == 200


def test_a_full_disk_while_saving_serves_no_half_image(client, monkeypatch):
    import errno
    import os

    real_fsync = os.fsync

    def no_space(fd):
        monkeypatch.setattr(os, "fsync", real_fsync)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    response = client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 1})
    assert response.status_code == 500
    images = client.data_dir / "images"
    assert not list(images.glob(".tmp-*"))
    assert client.post("/generate", json={"prompt": "x", "width": 64, "height": 64, "steps": 1}).status_code == 200
