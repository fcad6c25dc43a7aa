"""FLUX.1 LoRAs through ALICE's engine: a LoRA in diffusers/PEFT or kohya names draws as bare
diffusers draws with it loaded (FluxPipeline.load_lora_weights, set_adapters at the scale), on
dev and schnell alike; the run after it draws the plain model bit for bit; and a LoRA of the
other kind (SD on FLUX.1, FLUX.1 on SD) fails to load, loudly, instead of drawing without it.
Tiny random-weight pipelines, 64x64 in 2 steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from alice.engine.families import lora_family
from alice.engine.generate import BatchEntry, GenerationOutput
from alice.engine.loras import LoraLoadFailed, NoLayerTookIt
from alice.engine.spec import GenerationSpec
from harness.lora import write_demo_lora
from tests.families.test_engine_families import psnr
from tests.families.tiny_loras import DOUBLE_BLOCKS_ONLY, flux_lora_layers, write_diffusers_lora, write_kohya_lora

PROMPT = "a red circle on a blue square"
GUIDANCE = {"flux": 3.5, "flux-schnell": 0.0}


@pytest.fixture(scope="module")
def lora_files(tiny_family: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> file: "diffusers" (q, k, v of every block), "double" and "kohya" (the same double-block
    layers in diffusers' and kohya's names), "sd" (the demo SD model's)."""
    folder, out = tiny_family("flux"), tmp_path_factory.mktemp("flux-loras")
    double = flux_lora_layers(folder, seed=1, targets=DOUBLE_BLOCKS_ONLY)
    return {
        "diffusers": write_diffusers_lora(flux_lora_layers(folder), out / "diffusers.safetensors"),
        "double": write_diffusers_lora(double, out / "double.safetensors"),
        "kohya": write_kohya_lora(double, out / "kohya.safetensors"),
        "sd": write_demo_lora(out / "sd"),
    }


@pytest.fixture(scope="module")
def engine(tiny_family: Callable[[str], Path]) -> Any:
    """A DiffusersEngine over the tiny folders and the demo SD model ("demo"), on the CPU."""
    from alice.engine.demo import DEMO_MODEL_DIR
    from alice.engine.engine import DiffusersEngine
    from alice.engine.pipelines import choose_placement

    return DiffusersEngine(lambda name: DEMO_MODEL_DIR if name == "demo" else tiny_family(name),
                           choose_placement("cpu"))


def engine_draw(engine: Any, builder: str, loras: list[tuple[str, Path, float]] = ()) -> np.ndarray:
    flux = builder in GUIDANCE
    spec = GenerationSpec(prompt=PROMPT, seed=7, width=64, height=64, steps=2,
                          scheduler="flow-euler" if flux else "ddim", guidance_scale=GUIDANCE.get(builder, 7.5))
    [out] = engine.generate(builder, [BatchEntry(spec)], loras=list(loras), max_images=1, should_stop=lambda: None)
    assert isinstance(out, GenerationOutput)
    return np.asarray(out.images[0])


def bare_draw(folder: Path, builder: str, lora: Path, scale: float) -> np.ndarray:
    """Bare diffusers with the LoRA loaded as its docs show, at `scale`."""
    import torch
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True, disable_mmap=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[scale])
    image = pipe(prompt=PROMPT, height=64, width=64, num_inference_steps=2, guidance_scale=GUIDANCE[builder],
                 generator=torch.Generator("cpu").manual_seed(7)).images[0]
    return np.asarray(image)


def tensor_names(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as weights:
        return list(weights.keys())


def test_each_file_is_told_a_flux1_lora_by_its_tensor_names(lora_files: dict[str, Path]) -> None:
    assert tensor_names(lora_files["kohya"])[0].startswith("lora_unet_double_blocks_0_")
    # BFL's block names without FLUX.1's modulation are FLUX.2's too; the double-stream blocks'
    # attention alone in diffusers' names is SD3's, FLUX.2's and Qwen-Image's too.
    assert {name: lora_family(tensor_names(path)) for name, path in lora_files.items()} == {
        "diffusers": "flux1-dev", "kohya": "flux1-dev,flux2-klein", "sd": "sd15",
        "double": "sd3,flux1-dev,flux2-klein,qwen-image"}


@pytest.mark.parametrize(("builder", "form", "scale"), [
    ("flux", "diffusers", 1.0), ("flux", "diffusers", 0.6), ("flux", "kohya", 1.0), ("flux-schnell", "diffusers", 0.8),
])
def test_a_flux_lora_draws_as_bare_diffusers_with_it_then_the_plain_model_again(
    engine: Any, tiny_family: Callable[[str], Path], lora_files: dict[str, Path], builder: str, form: str, scale: float
) -> None:
    plain = engine_draw(engine, builder)
    with_lora = engine_draw(engine, builder, [("style", lora_files[form], scale)])
    expected = bare_draw(tiny_family(builder), builder, lora_files[form], scale)
    score = psnr(with_lora, expected)
    print(f"{builder} {form} x{scale}: PSNR {score:.1f} dB against bare diffusers, "
          f"{psnr(with_lora, plain):.1f} dB against the plain model")  # shown with -s
    assert score >= 40
    assert psnr(with_lora, plain) < 35  # the LoRA changed the picture
    assert np.array_equal(engine_draw(engine, builder), plain)  # unloaded: the next run is the plain model's


def test_kohya_names_draw_as_the_same_layers_in_diffusers_names(engine: Any, lora_files: dict[str, Path]) -> None:
    kohya = engine_draw(engine, "flux", [("k", lora_files["kohya"], 1.0)])
    assert psnr(kohya, engine_draw(engine, "flux", [("d", lora_files["double"], 1.0)])) >= 40
    assert not np.array_equal(kohya, engine_draw(engine, "flux"))


def test_scale_zero_draws_as_without(engine: Any, lora_files: dict[str, Path]) -> None:
    assert np.array_equal(engine_draw(engine, "flux", [("style", lora_files["diffusers"], 0.0)]),
                          engine_draw(engine, "flux"))


@pytest.mark.parametrize(("builder", "form"), [("flux", "sd"), ("demo", "diffusers"), ("demo", "kohya")])
def test_a_lora_of_the_other_kind_fails_to_load_and_leaves_the_model_clean(
    engine: Any, lora_files: dict[str, Path], builder: str, form: str
) -> None:
    """Diffusers loads an SD LoRA into a FLUX.1 pipeline (and a diffusers-named FLUX.1 LoRA into an
    SD one) as no layer at all, with a warning only: the engine refuses instead of drawing plain."""
    plain = engine_draw(engine, builder)
    with pytest.raises(LoraLoadFailed, match="'other' does not load") as failure:
        engine_draw(engine, builder, [("other", lora_files[form], 1.0)])
    if form != "kohya":  # peft itself refuses kohya's FLUX.1 names on the UNet
        assert isinstance(failure.value.__cause__, NoLayerTookIt)
    assert np.array_equal(engine_draw(engine, builder), plain)


def test_image_to_image_takes_the_lora_and_leaves_the_shared_transformer_clean(
    engine: Any, lora_files: dict[str, Path]
) -> None:
    """FluxImg2ImgPipeline shares the text-to-image pipeline's transformer: the adapter goes on
    and comes off the one module both draw with."""
    from PIL import Image

    plain = engine_draw(engine, "flux")
    spec = GenerationSpec(prompt=PROMPT, seed=7, width=64, height=64, steps=4, scheduler="flow-euler",
                          guidance_scale=3.5, strength=0.5, init_image="input.png")

    def img2img(loras: list[tuple[str, Path, float]]) -> np.ndarray:
        entry = BatchEntry(spec, init_image=Image.new("RGB", (64, 64), "navy"))
        [out] = engine.generate("flux", [entry], loras=loras, max_images=1, should_stop=lambda: None)
        return np.asarray(out.images[0])

    without = img2img([])
    assert psnr(img2img([("style", lora_files["diffusers"], 1.0)]), without) < 35
    assert np.array_equal(img2img([]), without) and np.array_equal(engine_draw(engine, "flux"), plain)
