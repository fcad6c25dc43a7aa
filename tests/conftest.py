"""Fixtures shared by every test directory, and the end-of-session check for leftover servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from alice.engine.heap import freeze_imported_objects
from harness.environment import private_bentoml_home
from tests.server_guard import pytest_configure, pytest_sessionfinish  # noqa: F401  (hooks)


@pytest.fixture
def bentoml_home(tmp_path: Path) -> Iterator[Path]:
    """A private, empty Bento model store for one test: BENTOML_HOME (for subprocesses) and
    bentoml's in-process store both point at it, and both are restored afterwards."""
    with private_bentoml_home(tmp_path / "bentoml") as home:
        yield home


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection imported (torch, diffusers, transformers) is left out of the collector's
    walks, as the server does at its start (alice/engine/heap.py): the tests' imports,
    evictions and benchmarks call gc.collect() hundreds of times. What the tests create is
    collected as before."""
    freeze_imported_objects()
