"""Tiny family pipelines, each built once per test session and shared by every test here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def engine(tiny_family: Callable[[str], Path]) -> Any:
    """A DiffusersEngine over the tiny folders (its model names are the builder keys), on the CPU."""
    from alice.engine.engine import DiffusersEngine
    from alice.engine.pipelines import choose_placement

    return DiffusersEngine(tiny_family, choose_placement("cpu"))


@pytest.fixture(scope="session")
def bare(tiny_family: Callable[[str], Path]) -> Callable[[str], Any]:
    """The bare diffusers pipeline of a tiny folder, loaded once per session (a test that loads a LoRA or
    another scheduler onto it puts it back), with its weights read
    into memory as ALICE reads them on the CPU (`disable_mmap`): Z-Image's tiny transformer draws
    5 grey levels apart in a few pixels (89 dB) from memory-mapped weights, in bare diffusers too."""
    from diffusers import DiffusionPipeline

    loaded: dict[str, Any] = {}

    def get(builder: str) -> Any:
        if builder not in loaded:
            loaded[builder] = DiffusionPipeline.from_pretrained(
                tiny_family(builder), local_files_only=True, disable_mmap=True
            )
            loaded[builder].set_progress_bar_config(disable=True)
        return loaded[builder]

    return get
