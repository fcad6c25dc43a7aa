"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import private_bentoml_home


@pytest.fixture
def bentoml_home(tmp_path: Path) -> Iterator[Path]:
    """A private, empty Bento model store for one test: BENTOML_HOME (for subprocesses) and
    bentoml's in-process store both point at it, and both are restored afterwards."""
    with private_bentoml_home(tmp_path / "bentoml") as home:
        yield home
