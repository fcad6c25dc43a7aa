"""`clip_skip`, counted as AUTOMATIC1111 counts it, reaches the pipeline call."""

from __future__ import annotations

import dataclasses

import numpy as np

from alice.engine.generate import GenerationSpec, run_generation

SPEC = GenerationSpec(prompt="a red circle on a blue background", seed=5, width=64, height=64, steps=3,
                      scheduler="ddim")


def test_clip_skip_one_is_the_last_layer_and_two_the_one_before(demo_pipeline):
    pipe, config = demo_pipeline
    draw = lambda spec: np.asarray(run_generation(pipe, config, spec).images[0])  # noqa: E731
    default = draw(SPEC)
    assert np.array_equal(draw(dataclasses.replace(SPEC, clip_skip=1)), default)  # A1111's 1: no layer skipped
    assert not np.array_equal(draw(dataclasses.replace(SPEC, clip_skip=2)), default)


def test_clip_skip_leaves_no_trace_on_the_text_encoder_class(demo_pipeline):
    """The workaround for diffusers#14124 lives on the pipeline's encoder for the call only: on
    the class it broke every later single-file conversion in the process (meta tensors)."""
    pipe, config = demo_pipeline
    run_generation(pipe, config, dataclasses.replace(SPEC, clip_skip=2))
    assert not hasattr(type(pipe.text_encoder), "text_model") and not hasattr(pipe.text_encoder, "text_model")
    assert "text_model" not in dict(pipe.text_encoder.named_modules())
