"""ALICE's engine draws each transformer family as the bare diffusers pipeline does: loaded by
its family's class, called with the arguments that family takes, with its flow schedulers,
progress, cancellation and batches. Tiny random-weight pipelines, 64x64 in 2 steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alice.engine.families import FAMILIES, detect_family
from alice.engine.generate import BatchEntry, GenerationOutput, GenerationStopped
from alice.engine.spec import GenerationSpec

# harness/tiny_pipelines.py's builders -> ALICE's family names
FAMILY_OF_BUILDER = {
    "sd3": "sd3",
    "flux": "flux1-dev",
    "flux-schnell": "flux1-schnell",
    "chroma": "chroma",
    "z-image": "zimage",
    "flux2-klein": "flux2-klein",
    "qwen-image": "qwen-image",
}
PROMPT = "a red circle on a blue square"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def bare_arguments(family: str, guidance: float) -> dict[str, Any]:
    """How a diffusers user calls the family's pipeline for the same image."""
    if FAMILIES[family].guidance == "true-cfg":  # Qwen-Image: true CFG, against a blank negative
        return {"true_cfg_scale": guidance, "negative_prompt": " "}
    return {"guidance_scale": guidance}


def bare_draw(pipe: Any, family: str, seed: int, steps: int = 2, guidance: float | None = None, **extra: Any) -> Any:
    import torch

    guidance = FAMILIES[family].default_guidance if guidance is None else guidance
    return pipe(
        prompt=extra.pop("prompt", PROMPT), height=64, width=64, num_inference_steps=steps,
        generator=extra.pop("generator", None) or torch.Generator("cpu").manual_seed(seed),
        **bare_arguments(family, guidance), **extra,
    ).images


def spec_for(family: str, **values: Any) -> GenerationSpec:
    defaults = FAMILIES[family]
    settings = dict(prompt=PROMPT, seed=7, width=64, height=64, steps=2, guidance_scale=defaults.default_guidance,
                    scheduler=defaults.default_scheduler)
    return GenerationSpec(**{**settings, **values})


def draw(engine: Any, builder: str, *entries: BatchEntry, max_images: int = 1) -> list[Any]:
    return engine.generate(builder, list(entries), loras=[], max_images=max_images, should_stop=lambda: None)


@pytest.mark.parametrize("builder", sorted(FAMILY_OF_BUILDER))
def test_the_engine_draws_each_family_as_the_bare_pipeline(
    builder: str, engine: Any, bare: Callable[[str], Any], tiny_family: Callable[[str], Path]
) -> None:
    family = FAMILY_OF_BUILDER[builder]
    assert detect_family(tiny_family(builder)) == family
    steps_seen: list[tuple[int, int]] = []
    [out] = draw(engine, builder, BatchEntry(spec_for(family), on_step=lambda done, total: steps_seen.append((done, total))))
    assert isinstance(out, GenerationOutput)
    loaded = engine.get(builder)
    assert loaded.family.name == family and type(loaded.pipe).__name__ == FAMILIES[family].text_to_image
    [expected] = bare_draw(bare(builder), family, seed=7)
    ours = np.asarray(out.images[0])
    score = psnr(ours, np.asarray(expected))
    print(f"{family}: PSNR {score:.1f} dB")  # shown with -s
    assert score >= 40
    assert np.array_equal(ours, np.asarray(expected))  # the same code runs: bit for bit
    assert steps_seen == [(1, 2), (2, 2)]


@pytest.mark.parametrize("builder", sorted(FAMILY_OF_BUILDER))
def test_every_scheduler_of_a_family_follows_its_shifted_schedule(builder: str, bare: Callable[[str], Any]) -> None:
    """Each flow scheduler a family lists runs its pipeline with the model's own shift: at 12 steps
    its first noise levels are flow-euler's (the multistep solvers space them a little
    differently: up to 0.006 apart), and its image is flow-euler's to within 30 dB. Unshifted,
    a shift-3 model's second and third levels would be 0.06 and 0.1 below."""
    from alice.engine.schedulers import build_scheduler

    family = FAMILY_OF_BUILDER[builder]
    pipe = bare(builder)
    base = dict(pipe.scheduler.config)
    drawn = {}
    try:
        for name in FAMILIES[family].schedulers:
            pipe.scheduler = build_scheduler(name, base, 3)
            [image] = bare_draw(pipe, family, seed=3, steps=12)
            drawn[name] = np.asarray(image), np.asarray(pipe.scheduler.sigmas[:3], dtype=np.float64)
    finally:
        pipe.scheduler = build_scheduler("flow-euler", base, 0)
    euler_image, euler_sigmas = drawn["flow-euler"]
    for name, (image, sigmas) in drawn.items():
        assert np.allclose(sigmas, euler_sigmas, atol=0.02), (name, sigmas, euler_sigmas)
        assert psnr(image, euler_image) >= 30, name


@pytest.mark.parametrize(
    ("builder", "scheduler", "error"),
    [  # why these families do not list these schedulers (alice/engine/families.py)
        ("flux-schnell", "flow-dpmpp-2m", AssertionError),  # `mu` without dynamic shifting
        ("chroma", "flow-dpmpp-2m", ValueError),  # `sigmas=`, which DPM++ does not take
        ("qwen-image", "flow-dpmpp-2m", ValueError),
        ("z-image", "flow-dpmpp-2m", ValueError),
        ("z-image", "flow-unipc", TypeError),  # its sigmas are a list
    ],
)
def test_schedulers_left_out_do_not_run_with_that_pipeline(
    builder: str, scheduler: str, error: type, bare: Callable[[str], Any]
) -> None:
    from alice.engine.schedulers import build_scheduler

    family = FAMILY_OF_BUILDER[builder]
    assert scheduler not in FAMILIES[family].schedulers
    pipe = bare(builder)
    base = dict(pipe.scheduler.config)
    pipe.scheduler = build_scheduler(scheduler, base, 0)
    try:
        with pytest.raises(error):
            bare_draw(pipe, family, seed=1)
    finally:
        pipe.scheduler = build_scheduler("flow-euler", base, 0)


@pytest.mark.parametrize("builder", ["flux", "sd3", "qwen-image"])
def test_a_batch_draws_each_image_as_alone(builder: str, engine: Any) -> None:
    """Two requests in one pipeline call (a list of prompts, a generator each) and a request of two
    images: each image as its request draws it alone."""
    family = FAMILY_OF_BUILDER[builder]
    first, second = spec_for(family, seed=11), spec_for(family, seed=12, prompt="a green cat", num_images=2)
    together = draw(engine, builder, BatchEntry(first), BatchEntry(second), max_images=3)
    alone = draw(engine, builder, BatchEntry(first)) + draw(engine, builder, BatchEntry(second))
    assert [len(out.images) for out in together] == [1, 2] and together[0].batch == 3
    for batched, single in zip(together, alone):
        for a, b in zip(batched.images, single.images):
            assert psnr(np.asarray(a), np.asarray(b)) >= 40
    # seeds repeat, and the seed matters
    again = draw(engine, builder, BatchEntry(first))[0].images[0]
    assert np.array_equal(np.asarray(again), np.asarray(alone[0].images[0]))
    assert not np.array_equal(np.asarray(alone[1].images[0]), np.asarray(alone[1].images[1]))


@pytest.mark.parametrize("builder", ["flux", "z-image"])
def test_a_transformer_run_stops_between_steps(builder: str, engine: Any) -> None:
    steps: list[int] = []
    stop = BatchEntry(spec_for(FAMILY_OF_BUILDER[builder], steps=4), on_step=lambda done, total: steps.append(done),
                      should_stop=lambda: "cancelled" if len(steps) >= 1 else None)
    [out] = draw(engine, builder, stop)
    assert isinstance(out, GenerationStopped) and out.reason == "cancelled"
    assert steps == [1]


@pytest.mark.parametrize("builder", ["flux", "sd3"])
def test_image_to_image_with_the_family_class(builder: str, engine: Any,
                                              bare: Callable[[str], Any]) -> None:
    import diffusers
    import torch
    from PIL import Image

    family = FAMILY_OF_BUILDER[builder]
    start = Image.new("RGB", (64, 64), "navy")
    spec = spec_for(family, steps=4, strength=0.5, init_image="input.png")
    [out] = draw(engine, builder, BatchEntry(spec, init_image=start))
    assert type(engine.get(builder).image_to_image).__name__ == FAMILIES[family].image_to_image
    img2img = getattr(diffusers, FAMILIES[family].image_to_image).from_pipe(bare(builder))
    expected = img2img(prompt=PROMPT, image=start, strength=0.5, num_inference_steps=4,
                       generator=torch.Generator("cpu").manual_seed(7),
                       **bare_arguments(family, spec.guidance_scale)).images[0]
    assert psnr(np.asarray(out.images[0]), np.asarray(expected)) >= 40


@pytest.mark.parametrize("builder", ["flux", "sd3", "flux2-klein"])
def test_inpainting_with_the_family_class_keeps_the_unmasked_area(builder: str, engine: Any) -> None:
    """A masked edit draws with the family's inpaint class over the loaded modules (FLUX.2 Klein
    too, which has no img2img), and every pixel outside the mask is the input's."""
    from PIL import Image

    family = FAMILY_OF_BUILDER[builder]
    start = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))  # 255: redraw
    spec = spec_for(family, steps=2, strength=1.0, init_image="input.png", mask_image="mask.png")
    [out] = draw(engine, builder, BatchEntry(spec, init_image=start, mask=mask))
    loaded = engine.get(builder)
    assert type(loaded.inpaint).__name__ == FAMILIES[family].inpaint
    assert loaded.inpaint.transformer is loaded.pipe.transformer  # no second copy of the weights
    drawn, original = np.asarray(out.images[0]).astype(int), np.asarray(start).astype(int)
    kept = np.asarray(mask) == 0
    assert (drawn[kept] == original[kept]).all()
    assert np.abs(drawn[~kept] - original[~kept]).mean() > 20  # redrawn
