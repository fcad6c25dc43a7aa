from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_pipeline(tmp_path_factory):
    """The demo pipeline loaded the way the service loads it, and its own scheduler config."""
    from alice.engine.demo import save_demo_pipeline
    from alice.engine.pipelines import choose_placement, load_pipeline

    folder = tmp_path_factory.mktemp("demo")
    save_demo_pipeline(folder)
    pipe = load_pipeline(folder, choose_placement("cpu"))
    return pipe, pipe.scheduler.config


@pytest.fixture(scope="session")
def sdxl_pipeline(tmp_path_factory):
    """The tiny SDXL pipeline (tests/support.py) loaded the way the service loads it."""
    from alice.engine.pipelines import choose_placement, load_pipeline
    from tests.support import save_tiny_sdxl_pipeline

    return load_pipeline(save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-xl")), choose_placement("cpu"))
