"""No black image served as a success: NaN injected by forward hooks into the real demo pipeline
(its VAE's last layer, its UNet's output) and the tiny FLUX.1, and a normal drawing unchanged."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from alice.engine.finite import NonFiniteOutput
from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.schedulers import build_scheduler

SPEC = GenerationSpec(prompt="a red circle", seed=7, width=64, height=64, steps=2)


def nan_of(output: Any) -> Any:
    """The module's output, NaN throughout, in the shape the module answers (tensor, tuple, dataclass)."""
    if isinstance(output, torch.Tensor):
        return torch.full_like(output, float("nan"))
    if isinstance(output, tuple):
        return (nan_of(output[0]), *output[1:])
    output[next(iter(output.keys()))] = nan_of(output[0])
    return output


@contextlib.contextmanager
def nan_from(module: torch.nn.Module, when: Callable[[torch.nn.Module], bool] = lambda m: True) -> Iterator[list[int]]:
    """`module` answers NaN while `when(module)` holds; yields the calls that did."""
    poisoned: list[int] = []

    def hook(mod: torch.nn.Module, args: Any, output: Any) -> Any:
        if when(mod):
            poisoned.append(1)
            return nan_of(output)
        return None

    handle = module.register_forward_hook(hook)
    try:
        yield poisoned
    finally:
        handle.remove()


def overflows_below_fp32(layer: torch.nn.Module) -> bool:
    """An fp16 overflow as a fine-tuned VAE has it: NaN in half precision, fine in float32."""
    return layer.weight.dtype != torch.float32


@pytest.fixture(scope="module")
def half_demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The demo in bfloat16 (the CPU's half precision), loaded as the service loads it."""
    from alice.engine.demo import save_demo_pipeline

    folder = tmp_path_factory.mktemp("demo-half")
    save_demo_pipeline(folder)
    return load_pipeline(folder, choose_placement("cpu", "bfloat16"))


def test_a_normal_drawing_is_bit_for_bit_the_bare_pipelines(demo_pipeline) -> None:
    pipe, config = demo_pipeline
    ours = np.asarray(run_generation(pipe, config, SPEC).images[0])
    pipe.scheduler = build_scheduler(SPEC.scheduler, config, SPEC.seed)
    with torch.inference_mode():
        bare = pipe(prompt=SPEC.prompt, negative_prompt=None, guidance_scale=SPEC.guidance_scale, width=64,
                    height=64, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(SPEC.seed)).images[0]
    assert np.array_equal(ours, np.asarray(bare))
    assert "decode" not in vars(pipe.vae)  # the check is gone after the call


def test_a_vae_overflow_is_decoded_again_in_float32_and_warned_once(half_demo, caplog) -> None:
    config = half_demo.scheduler.config
    with caplog.at_level(logging.WARNING, logger="alice"), \
            nan_from(half_demo.vae.decoder.conv_out, overflows_below_fp32) as poisoned:
        image = run_generation(half_demo, config, SPEC).images[0]
        again = run_generation(half_demo, config, SPEC).images[0]
    assert len(poisoned) == 2  # each drawing's first decode overflowed
    pixels = np.asarray(image)
    assert pixels.std() > 1 and np.array_equal(pixels, np.asarray(again))  # an image, not black
    assert half_demo.vae.dtype == torch.bfloat16  # back in its own dtype after the retry
    warnings = [r for r in caplog.records if "overflowed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    assert "demo-half" in message and "bfloat16" in message and "ALICE_DTYPE=float32" in message


def test_a_vae_nan_in_float32_too_fails(demo_pipeline) -> None:
    pipe, config = demo_pipeline
    with nan_from(pipe.vae.decoder.conv_out), pytest.raises(NonFiniteOutput) as failure:
        run_generation(pipe, config, SPEC)
    assert failure.value.part == "vae" and "float32" in str(failure.value)


def test_nan_from_the_unet_fails_the_drawing_naming_the_dtype_and_the_setting(half_demo) -> None:
    with nan_from(half_demo.unet), pytest.raises(NonFiniteOutput) as failure:
        run_generation(half_demo, half_demo.scheduler.config, SPEC)
    assert failure.value.part == "denoiser"
    message = str(failure.value)
    assert "NaN in bfloat16 on the CPU" in message and "ALICE_DTYPE=float32" in message
    assert "decode" not in vars(half_demo.vae)
    run_generation(half_demo, half_demo.scheduler.config, SPEC)  # the next drawing works


def nan_in_row(row: int, rows: int) -> Callable[[torch.nn.Module, Any, Any], Any]:
    """A forward hook that makes one image of the batch NaN: the UNet's batch is the unconditional
    half then the conditional one (that image's row in both); a batch's decode goes an image at a
    time (VAE slicing), so there the image is the call's."""
    calls: list[int] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
        sample = output if isinstance(output, torch.Tensor) else output[0] if isinstance(output, tuple) else output.sample
        calls.append(1)
        if sample.shape[0] == 1:
            if len(calls) == row + 1:
                sample[0] = float("nan")
            return output
        for index in range(row, sample.shape[0], rows):
            sample[index] = float("nan")
        return output

    return hook


@pytest.mark.parametrize("part", ["unet", "vae"])
def test_in_a_batch_only_the_image_that_came_out_nan_fails(demo_pipeline, part: str) -> None:
    """Batched requests are other clients' jobs: one image's NaN fails its own entry alone, and
    the others get the very pixels the same call draws without it."""
    from alice.engine.generate import BatchEntry, run_batch

    pipe, config = demo_pipeline
    entries = [BatchEntry(SPEC), BatchEntry(dataclasses.replace(SPEC, seed=8, num_images=2))]
    clean = run_batch(pipe, config, entries, max_images=3)
    module = pipe.unet if part == "unet" else pipe.vae.decoder.conv_out
    handle = module.register_forward_hook(nan_in_row(1, rows=3))  # the second entry's first image
    try:
        drawn = run_batch(pipe, config, entries, max_images=3)
    finally:
        handle.remove()
    kept, failed = drawn
    assert isinstance(failed, NonFiniteOutput), failed  # all its images or none
    assert failed.part == ("denoiser" if part == "unet" else "vae")
    assert [np.asarray(image) for image in kept.images] and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(kept.images, clean[0].images)
    ) and kept.batch == 3
    assert "decode" not in vars(pipe.vae)


def test_a_call_whose_every_image_is_nan_fails_its_entries_and_the_next_call_still_draws(demo_pipeline) -> None:
    from alice.engine.generate import BatchEntry, run_batch

    pipe, config = demo_pipeline
    entries = [BatchEntry(SPEC), BatchEntry(dataclasses.replace(SPEC, seed=8))]
    calls: list[int] = []

    def first_call_only(module: torch.nn.Module, args: Any, output: Any) -> Any:
        calls.append(1)
        return nan_of(output) if len(calls) <= SPEC.steps else None  # the first call's steps

    handle = pipe.unet.register_forward_hook(first_call_only)
    try:
        failed, kept = run_batch(pipe, config, entries, max_images=1)
    finally:
        handle.remove()
    assert isinstance(failed, NonFiniteOutput) and failed.part == "denoiser"
    alone = run_generation(pipe, config, dataclasses.replace(SPEC, seed=8))
    assert np.array_equal(np.asarray(kept.images[0]), np.asarray(alone.images[0]))
