"""LoRAs of the transformer families beyond FLUX.1's diffusers and kohya names, through ALICE's
engine: SD3, Chroma, Z-Image, FLUX.2 Klein and Qwen-Image LoRAs in the names their trainers write,
and FLUX.1's in XLabs' and ComfyUI's. Each file is labelled at import by its tensor names, and
draws as the bare diffusers pipeline draws with it loaded (the same code: bit for bit), unlike the
plain model, which the next run draws again. Tiny random-weight pipelines, 64x64 in 2 steps."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from alice.engine.families import FAMILIES, lora_family
from alice.engine.generate import BatchEntry
from tests.families.test_engine_families import (
    FAMILY_OF_BUILDER,
    bare_draw,
    psnr,
    spec_for,
)
from tests.families.tiny_loras import (
    DOUBLE_BLOCKS_ONLY,
    lora_layers,
    write_diffusers_lora,
    write_kohya_lora,
    write_renamed_lora,
    write_shared_down_lora,
)

ATTENTION = ("to_q", "to_k", "to_v")
# Shared by SD3, FLUX.1, FLUX.2 and Qwen-Image: the double-stream blocks' attention in diffusers' names
SHARED_ATTENTION = "sd3,flux1-dev,flux2-klein,qwen-image"


def _kohya_name(prefix: str) -> Callable[[str], str]:
    return lambda module: prefix + module.replace(".", "_")


# (builder, form) -> (how its file is made from the tiny transformer, the label its names give)
FORMS: dict[tuple[str, str], tuple[Callable[[Path, Path], Path], str]] = {
    # diffusers' and SimpleTuner's SD3 trainers: the joint blocks' attention (SD3's loader converts nothing)
    ("sd3", "diffusers"): (lambda folder, out: write_diffusers_lora(
        lora_layers(folder, targets=ATTENTION + ("add_q_proj", "add_k_proj", "add_v_proj")), out), SHARED_ATTENTION),
    # Chroma takes FLUX.1's names (its loader is FLUX.1's): diffusers' of both block kinds, kohya's
    ("chroma", "diffusers"): (lambda folder, out: write_diffusers_lora(lora_layers(folder), out), "flux1-dev"),
    ("chroma", "kohya"): (lambda folder, out: write_kohya_lora(
        lora_layers(folder, seed=1, targets=DOUBLE_BLOCKS_ONLY), out), "flux1-dev,flux2-klein"),
    # Z-Image: diffusers' names, and ai-toolkit's (`diffusion_model.`), kohya's
    ("z-image", "diffusers"): (lambda folder, out: write_diffusers_lora(lora_layers(folder), out), "zimage"),
    ("z-image", "ai-toolkit"): (lambda folder, out: write_renamed_lora(
        lora_layers(folder, seed=1), out, lambda module: "diffusion_model." + module), "zimage"),
    ("z-image", "kohya"): (lambda folder, out: write_renamed_lora(
        lora_layers(folder, seed=2, targets=r"layers\.\d+\.attention\.to_[qkv]"), out, _kohya_name("lora_unet_"),
        kohya=True), "zimage"),
    # FLUX.2 Klein: diffusers' names (its fused single-block projection its own), ai-toolkit's BFL names
    ("flux2-klein", "diffusers"): (lambda folder, out: write_diffusers_lora(
        lora_layers(folder, targets=ATTENTION + ("to_qkv_mlp_proj",)), out), "flux2-klein"),
    ("flux2-klein", "ai-toolkit"): (lambda folder, out: write_shared_down_lora(
        lora_layers(folder, seed=1, targets=DOUBLE_BLOCKS_ONLY, shared_down=True), out, "ai-toolkit"),
        "flux1-dev,flux2-klein"),
    # Qwen-Image: diffusers' names (with its own MLPs), kohya's and musubi-tuner's
    ("qwen-image", "diffusers"): (lambda folder, out: write_diffusers_lora(
        lora_layers(folder, targets=ATTENTION + ("img_mlp.net.2",)), out), "qwen-image"),
    ("qwen-image", "kohya"): (lambda folder, out: write_renamed_lora(
        lora_layers(folder, seed=1, targets=ATTENTION + ("img_mlp.net.2",)), out, _kohya_name("lora_unet_"),
        kohya=True), "qwen-image"),
    # FLUX.1 in XLabs' and ComfyUI's names (diffusers' and kohya's: test_flux_loras.py)
    ("flux", "xlabs"): (lambda folder, out: write_shared_down_lora(
        lora_layers(folder, seed=1, targets=DOUBLE_BLOCKS_ONLY, shared_down=True), out, "xlabs"), "flux1-dev"),
    ("flux", "comfyui"): (lambda folder, out: write_kohya_lora(
        lora_layers(folder, seed=1, targets=DOUBLE_BLOCKS_ONLY), out, "comfyui"), "flux1-dev,flux2-klein"),
    ("flux", "comfyui-peft"): (lambda folder, out: write_kohya_lora(
        lora_layers(folder, seed=1, targets=DOUBLE_BLOCKS_ONLY), out, "comfyui-peft"), "flux1-dev,flux2-klein"),
}
# Bare diffusers loads ComfyUI's names with PEFT's matrices into no layer: the same LoRA in
# ComfyUI's kohya matrices is what it draws (ALICE renames the one into the other).
BARE_FORM = {("flux", "comfyui-peft"): ("flux", "comfyui")}
# Drawn (each costs seconds): one naming of each family, the one most of its published LoRAs use,
# and the FLUX.1 namings this adds; the others' conversion is diffusers' own, labelled above.
# Z-Image's is drawn through the service (tests/http/test_families.py).
DRAWN = [("sd3", "diffusers"), ("chroma", "diffusers"), ("flux2-klein", "ai-toolkit"), ("qwen-image", "kohya"),
         ("flux", "xlabs"), ("flux", "comfyui-peft")]
# FLUX.1's loader (Chroma's too) is shown to leave the plain model by tests/families/test_flux_loras.py
LOADER_UNLOAD_SHOWN = {"flux", "chroma"}


@pytest.fixture(scope="module")
def lora_files(tiny_family: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    out, made = tmp_path_factory.mktemp("transformer-loras"), {}

    def file(builder: str, form: str) -> Path:
        if (builder, form) not in made:
            made[builder, form] = FORMS[builder, form][0](tiny_family(builder), out / f"{builder}-{form}.safetensors")
        return made[builder, form]

    return file


def engine_draw(engine: Any, builder: str, loras: list[tuple[str, Path, float]] = ()) -> np.ndarray:
    spec = spec_for(FAMILY_OF_BUILDER[builder])
    [out] = engine.generate(builder, [BatchEntry(spec)], loras=list(loras), max_images=1, should_stop=lambda: None)
    return np.asarray(out.images[0])


def bare_lora_draw(pipe: Any, builder: str, lora: Path, scale: float) -> np.ndarray:
    """Bare diffusers with the LoRA loaded as its docs show, at `scale`; unloaded again after."""
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style")
    try:
        pipe.set_adapters(["style"], adapter_weights=[scale])
        [image] = bare_draw(pipe, FAMILY_OF_BUILDER[builder], seed=7)
    finally:
        pipe.unload_lora_weights()
    return np.asarray(image)


def tensor_names(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as weights:
        return list(weights.keys())


@pytest.mark.parametrize(("builder", "form"), sorted(FORMS))
def test_each_file_is_labelled_with_the_families_its_names_fit(
    lora_files: Callable[[str, str], Path], builder: str, form: str
) -> None:
    label = lora_family(tensor_names(lora_files(builder, form)))
    assert label == FORMS[builder, form][1]
    assert FAMILIES[FAMILY_OF_BUILDER[builder]].takes_loras_of in label.split(",")  # the model it was made on takes it


@pytest.mark.parametrize(("builder", "form"), DRAWN)
def test_a_lora_draws_as_bare_diffusers_with_it_then_the_plain_model_again(
    engine: Any, bare: Callable[[str], Any], lora_files: Callable[[str, str], Path], builder: str, form: str
) -> None:
    plain = engine_draw(engine, builder)
    with_lora = engine_draw(engine, builder, [("style", lora_files(builder, form), 0.8)])
    expected = bare_lora_draw(bare(builder), builder, lora_files(*BARE_FORM.get((builder, form), (builder, form))),
                              0.8)
    print(f"{builder} {form}: PSNR {psnr(with_lora, expected):.1f} dB against bare diffusers, "
          f"{psnr(with_lora, plain):.1f} dB against the plain model")  # shown with -s
    assert np.array_equal(with_lora, expected)  # the same code runs: bit for bit
    assert psnr(with_lora, plain) < 35  # the LoRA changed the picture
    if builder not in LOADER_UNLOAD_SHOWN:  # unloaded: the next run is the plain model's
        assert np.array_equal(engine_draw(engine, builder), plain)
