"""A compile that fails leaves the model drawing eager (alice/engine/compiled_unet.py).

The compiled shapes themselves (one graph for every batch and sampler, other shapes eager
without a recompile, counted on /health and Prometheus) are proven end to end, with
inductor's real compile, by tests/http/test_compiled_unet_loras.py: one compile serves both.
"""

from __future__ import annotations

import logging

import pytest

from alice.engine.compiled_unet import CompiledShapes
from alice.engine.demo import save_demo_pipeline
from alice.engine.device import MemoryOptions
from alice.engine.engine import DiffusersEngine
from alice.engine.families import family_named
from alice.engine.generate import BatchEntry, GenerationSpec, run_batch
from alice.engine.pipelines import choose_placement, unet_is_compiled


def draw(pipe):
    spec = GenerationSpec(prompt="a boat", width=64, height=64, steps=2, seed=3, scheduler="ddim")
    [result] = run_batch(pipe, pipe.scheduler.config, [BatchEntry(spec)], family=family_named("sd15"))
    return result.images


def test_a_compile_that_fails_leaves_the_model_drawing_eager(tmp_path, caplog):
    save_demo_pipeline(tmp_path)
    engine = DiffusersEngine(lambda name: tmp_path, choose_placement("cpu"), options=MemoryOptions(compile_unet=True))
    loaded = engine.get("demo")
    assert unet_is_compiled(loaded.pipe)  # in place, lazily: nothing compiled yet

    def compile_fails(*args, **kwargs):  # what a compiled call does on a host whose compiler breaks
        raise RuntimeError("inductor: C++ compile error")

    loaded.pipe.unet._compiled_call_impl = compile_fails
    logger = logging.getLogger("alice.engine")
    logger.addHandler(caplog.handler)  # the alice logger may not propagate
    try:
        engine.warm_up("demo", lambda: CompiledShapes(64, 64, 2))
    finally:
        logger.removeHandler(caplog.handler)
    assert any("compiling the UNet of model demo failed; it runs eager" in r.getMessage() for r in caplog.records)
    assert not unet_is_compiled(loaded.pipe) and engine.compile_status() == {}
    assert len(draw(loaded.pipe)) == 1
    # An eager UNet is left as it is, without asking what to compile it for.
    engine.warm_up("demo", lambda: pytest.fail("no shapes are needed for an eager UNet"))
    assert not unet_is_compiled(loaded.pipe)
