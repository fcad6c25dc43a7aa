"""Tiny family pipelines, each built once per test session and shared by every test here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from harness.tiny_pipelines import BUILDERS


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`tiny_family("flux")` -> the folder of that tiny pipeline, built on first use only.

    A folder, not a loaded pipeline: tests load it their own way (from_pretrained, the
    service's loader, single-file conversion) and may not share mutable modules.
    """
    built: dict[str, Path] = {}

    def folder(family: str) -> Path:
        if family not in built:
            built[family] = BUILDERS[family](tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return folder
