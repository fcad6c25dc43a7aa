"""A transformer-family model is planned from its own files (not the family's released sizes),
and one that fits neither the card nor the RAM is refused before any weight is read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers import DiffusionPipeline

from alice.engine.device import GiB, DeviceFacts, MemoryOptions
from alice.engine.model_sizes import preset_inputs
from alice.engine.pipelines import DevicePlacement, choose_placement, load_pipeline, memory_preset
from alice.engine.presets import PresetDoesNotFit
from tests.families.test_transformer_files import WEIGHTS, write_gguf


def numel(module: torch.nn.Module) -> int:
    """What its file holds: parameters and saved buffers (SD3's position embedding is one), a
    tied tensor once (T5's token embedding is both `shared` and the encoder's)."""
    return sum({t.data_ptr(): t.numel() for t in module.state_dict().values()}.values())


@pytest.mark.parametrize("tiny", ["flux", "sd3"])
def test_the_planner_counts_the_folders_own_weights(tiny_family: Callable[[str], Path], tiny: str) -> None:
    folder = tiny_family(tiny)
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    inputs = preset_inputs(folder, "flux1-dev" if tiny == "flux" else "sd3")
    assert inputs.transformer_params == numel(pipe.transformer)
    assert inputs.transformer_bytes == 2 * numel(pipe.transformer)  # 16-bit bytes, whatever the file's dtype
    assert inputs.quantized is None
    encoders = {name: 2 * numel(module) for name, module in pipe.components.items() if name.startswith("text_encoder")}
    assert inputs.text_encoders == encoders


def test_a_gguf_transformer_counts_as_its_file(tiny_family: Callable[[str], Path], tmp_path: Path) -> None:
    folder = tmp_path / "flux-gguf"
    import shutil

    shutil.copytree(tiny_family("flux"), folder)
    whole = folder / WEIGHTS
    write_gguf(whole, folder / "transformer" / "flux-q8.gguf", "Q8_0")
    params = numel(DiffusionPipeline.from_pretrained(tiny_family("flux"), local_files_only=True).transformer)
    whole.unlink()
    inputs = preset_inputs(folder, "flux1-dev")
    assert inputs.quantized == "gguf"
    assert inputs.transformer_bytes == (folder / "transformer" / "flux-q8.gguf").stat().st_size
    assert inputs.transformer_params == params


def test_a_model_too_big_for_card_and_ram_is_refused_before_loading(tiny_family: Callable[[str], Path]) -> None:
    # A 1 GiB card (half of it the CUDA context) on a host with 3 GiB of RAM (all of it the
    # reserve): even a tiny model's 1024 px decode fits nowhere.
    facts = DeviceFacts(device="cuda:0", name="Tiny card", capability=(6, 1), total_memory=1 * GiB,
                        arch_list=("sm_61",), host_memory=3 * GiB, free_memory=1 * GiB)
    placement = DevicePlacement("cuda:0", torch.float16, facts)
    preset = memory_preset(tiny_family("flux"), placement, MemoryOptions())
    assert not preset.fits and "does not fit" in preset.reason
    with pytest.raises(PresetDoesNotFit, match="does not fit"):
        load_pipeline(tiny_family("flux"), placement)  # no CUDA here: it never got as far as loading


def test_on_the_cpu_a_planned_model_draws_as_before(tiny_family: Callable[[str], Path]) -> None:
    placement = choose_placement("cpu")
    preset = memory_preset(tiny_family("flux"), placement, MemoryOptions())
    assert preset.fits and dict(preset.parts) and set(dict(preset.parts).values()) == {"cpu"}
    assert load_pipeline(tiny_family("flux"), placement).transformer.device.type == "cpu"
