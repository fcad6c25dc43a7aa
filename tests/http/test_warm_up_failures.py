"""A default model that fails to load: `/health` says so and why, `/readyz` stays not ready, the
log has the traceback; running out of memory while loading is `out_of_memory`, not a crash."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from alice.engine import pipelines
from harness.environment import alice_environment
from tests.http.conftest import service_client, wait_ready

SAM = {"messages": [{"role": "user", "content": "x"}], "metadata": {"width": 64, "height": 64, "steps": 2}}


@contextlib.contextmanager
def server(tmp: Path, prepare_store: Callable[[], None] = lambda: None, **env: str) -> Iterator[TestClient]:
    """The in-process app, started once the store is prepared, without waiting for it to be ready."""
    with alice_environment(tmp, env):
        prepare_store()
        with service_client() as client:
            yield client


def settled_health(client: TestClient, timeout: float = 60.0) -> dict:
    """`/health` once the warm-up is over (ready or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = client.get("/health").json()
        if health["status"] != "loading":
            return health
        time.sleep(0.05)
    raise AssertionError(f"still loading: {health}")


def store_a_corrupt_copy_of_the_demo() -> None:
    """The demo model stored as `broken`, then its UNet weights overwritten with garbage in the store."""
    from alice.models import checkpoints
    from alice.engine.demo import DEMO_MODEL_DIR

    stored = checkpoints.import_pipeline_folder(DEMO_MODEL_DIR, "broken")
    weights = stored.path / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x13\x37 not a safetensors file " * 1000)


def test_a_corrupt_default_model_is_an_error_on_health_and_never_ready(tmp_path, caplog):
    alice_logger = logging.getLogger("alice")  # it does not propagate to caplog's root handler
    alice_logger.addHandler(caplog.handler)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(alice_logger.removeHandler, caplog.handler)
        client = cleanup.enter_context(
            server(tmp_path, store_a_corrupt_copy_of_the_demo, ALICE_DEFAULT_MODEL="broken")
        )
        health = settled_health(client)
        assert health["status"] == "error"
        assert "broken" in health["error"] and "failed to load" in health["error"]
        assert "Traceback" not in client.get("/health").text
        assert str(tmp_path) not in health["error"]  # no paths from the server's disk
        assert client.get("/readyz").status_code != 200
        # The log has the reason and the traceback.
        [record] = [r for r in caplog.records if "failed to load" in r.getMessage()]
        assert record.levelno == logging.ERROR and record.exc_info is not None
        # The demo model still draws.
        assert client.post("/v1/chat/completions", json={**SAM, "model": "sd/alice-demo"}).status_code == 200


def fail_loading_once(monkeypatch) -> None:
    """The next pipeline load runs out of GPU memory, raised where PipelineCache calls the loader
    (no GPU here to run out of)."""
    real = pipelines.load_pipeline

    def out_of_memory(*args, **kwargs):
        monkeypatch.setattr(pipelines, "load_pipeline", real)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB")

    monkeypatch.setattr(pipelines, "load_pipeline", out_of_memory)


def test_out_of_memory_loading_the_default_model_is_an_error_until_it_loads(tmp_path, monkeypatch):
    fail_loading_once(monkeypatch)
    with server(tmp_path) as client:
        health = settled_health(client)
        assert health["status"] == "error" and "memory" in health["error"] and "alice-demo" in health["error"]
        assert client.get("/readyz").status_code != 200
        # Memory is back (the next load works): the first request loads it, and the server is ready.
        assert client.post("/v1/chat/completions", json=SAM).status_code == 200
        assert client.get("/health").json()["status"] == "ok" and client.get("/health").json()["error"] is None
        wait_ready(client, timeout=5)


def test_out_of_memory_loading_a_model_for_a_request_is_out_of_memory(tmp_path, monkeypatch):
    with server(tmp_path) as client:
        wait_ready(client)
        assert client.post("/v1/models/sd/alice-demo/unload").status_code == 200
        fail_loading_once(monkeypatch)
        response = client.post("/v1/chat/completions", json=SAM)
        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "out_of_memory" and "loading model 'alice-demo'" in error["message"]
        assert response.headers["x-should-retry"] == "false"
        assert client.post("/v1/chat/completions", json=SAM).status_code == 200  # it loads this time

        assert client.post("/v1/models/sd/alice-demo/unload").status_code == 200
        fail_loading_once(monkeypatch)
        response = client.post("/v1/models/sd/alice-demo/load")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "out_of_memory"
        assert client.post("/v1/models/sd/alice-demo/load").status_code == 200
