"""In-process HTTP tests: the real BentoML app (routing, mounts, middleware) on the demo model,
or on a fake engine (tests/fake_engine.py) where the wire format is the point, not the pixels."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from harness.environment import alice_environment
from tests.fake_engine import FakeEngine
from tests.support import forget_service_metrics

API_KEY = "test-key-1"
OTHER_KEY = "test-key-2"


def start_client(tmp: Path, engine: object | None = None, **env: str) -> Iterator[TestClient]:
    """The service in process; its runtime draws with `engine` (None: the diffusers pipelines)."""
    with storing_for(engine), alice_environment(tmp, env) as root, service_client(engine) as client:
        client.data_dir = root / "data"  # type: ignore[attr-defined]
        client.engine = engine  # type: ignore[attr-defined]
        wait_ready(client)
        yield client


def start_fake_client(tmp: Path, step_seconds: float = 0.0, **env: str) -> Iterator[TestClient]:
    """The service in process over a FakeEngine: the wire formats in milliseconds."""
    yield from start_client(tmp, FakeEngine(step_seconds), **env)


@contextlib.contextmanager
def service_client(engine: object | None = None) -> Iterator[TestClient]:
    """The service's app in process, started (not waited for), serving with the settings of the
    environment as it is now and drawing with `engine` (None: the diffusers pipelines).

    A server reads its settings once; this process starts one per test module, each in an
    environment of its own, so each start is handed its own (the seam ServiceSetup offers)."""
    import service
    from alice.config import load_settings

    forget_service_metrics()
    with service.setup.serving_with(load_settings(), engine), \
            TestClient(service.Alice.to_asgi(), base_url="http://testserver") as client:
        yield client


@contextlib.contextmanager
def storing_for(engine: object | None) -> Iterator[None]:
    """A fake engine never loads a stored model, so storing one (the demo) skips the load that
    checks it: most of a fake client's start."""
    if engine is None:
        yield
        return
    from alice.models import checkpoints

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoints, "_check_loads", lambda folder, family=None: None)
        yield


def wait_ready(client: TestClient, timeout: float = 300.0) -> None:
    """Wait for the default model; a load takes well under a second on a quiet machine, so
    the generous bound only matters on a loaded one. A load that failed ends the wait at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        health = client.get("/health").json()
        if health.get("status") == "error":
            raise AssertionError(f"the default model failed to load: {health}")
        time.sleep(0.05)
    raise AssertionError(f"not ready after {timeout:.0f} s: {client.get('/health').json()}")


@contextlib.contextmanager
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Every record BentoML's and ALICE's loggers emit in the block (ALICE's do not reach the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(), logging.getLogger("alice")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def errors_logged(records: list[logging.LogRecord]) -> list[str]:
    """The records at ERROR or above, or with a traceback, as the log would print them."""
    return [logging.Formatter().format(record) for record in records
            if record.levelno >= logging.ERROR or record.exc_info]


def wait_for_state(client: TestClient, state: str, count: int = 1, timeout: float = 30.0) -> list[dict]:
    """The jobs in `state` once there are `count` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [job for job in client.get("/v1/jobs").json()["data"] if job["state"] == state]
        if len(jobs) >= count:
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"no {count} job(s) {state}: {client.get('/v1/jobs').json()}")


def module_engine(request: pytest.FixtureRequest) -> FakeEngine | None:
    """A FakeEngine for a module marked `fake_engine` (`pytestmark = pytest.mark.fake_engine`),
    else None: the real pipelines."""
    return FakeEngine() if request.node.get_closest_marker("fake_engine") else None


@pytest.fixture(scope="module")
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """An open server (no API key configured)."""
    yield from start_client(tmp_path_factory.mktemp("open"), module_engine(request))


@pytest.fixture(scope="module")
def keyed_client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A server with two API keys."""
    yield from start_client(
        tmp_path_factory.mktemp("keyed"), module_engine(request), ALICE_API_KEYS=f"{API_KEY}, {OTHER_KEY}"
    )
