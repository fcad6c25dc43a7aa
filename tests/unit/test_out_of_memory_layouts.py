"""Out of memory is not final: one image that runs out of memory is drawn again one layout
cheaper, and that layout is kept for images of its size and larger.

The decision is a pure function, checked for every step; the re-layout runs on the real demo
pipeline on the CPU, with the card faked (DeviceFacts of a large GPU, so the presets plan
offload) and the out-of-memory error injected by a forward pre-hook that raises while the UNet is
not model-offloaded: "this layout does not fit". diffusers' model offload runs with the CPU as its
"accelerator" and draws the same pixels; sequential offload does not run on the CPU with the
pinned accelerate 1.15 and transformers 5.23 (the CLIP token embedding's Parameter comes back a
plain Tensor, and moving it to `meta` raises a TypeError, in bare diffusers too), so that step is
checked by its hooks only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from alice.engine.device import GiB, DeviceFacts, MemoryOptions, MemoryPreset
from alice.engine.escalation import cheaper_layout, layout_name
from alice.engine.generate import BatchEntry
from alice.engine.presets import plan_preset, reference_inputs
from alice.engine.spec import GenerationSpec

BIG_CARD = DeviceFacts(device="cuda:0", name="Fake 24 GB card", capability=(8, 6), total_memory=24 * GiB,
                       host_memory=64 * GiB, free_memory=23 * GiB)
NONE = MemoryPreset("sdxl", "none", None, False, True)


def steps(
    preset: MemoryPreset, options: MemoryOptions = MemoryOptions(), side: int = 1024, gpu: bool = True
) -> list[str]:
    """The layouts escalation walks through from `preset`, and why it stopped."""
    walked = []
    while True:
        step = cheaper_layout(preset, options, gpu=gpu, width=side, height=side)
        if step.preset is None:
            return [*walked, f"stop: {step.note}"]
        preset = step.preset
        walked.append(layout_name(preset))


def test_a_unet_family_tiles_then_offloads_by_model_then_by_layer():
    assert steps(NONE) == ["none+tiling", "model+tiling", "sequential+tiling",
                           "stop: sequential+tiling is the cheapest layout"]
    tiled = cheaper_layout(NONE, MemoryOptions(), gpu=True, width=1024, height=768).preset
    assert tiled.vae_tiling_above == 512 and tiled.channels_last and tiled.family == "sdxl"


def test_tiling_is_skipped_where_it_would_not_tile_the_image():
    assert steps(NONE, side=512)[0] == "model"  # a 512 px image decodes whole under 512 px tiles
    assert steps(replace(NONE, vae_tiling_above=512), side=1024)[0] == "model+tiling"  # tiles already


def test_explicit_settings_pin_their_part_and_say_so():
    pinned_offload = steps(NONE, MemoryOptions(cpu_offload="none"))
    assert pinned_offload == [
        "none+tiling", "stop: ALICE_CPU_OFFLOAD=none is set explicitly: no other offload is tried"
    ]
    untiled = steps(NONE, MemoryOptions(vae_tiling=False))
    assert untiled[:2] == ["model", "sequential"]
    assert "ALICE_VAE_TILING=false is set explicitly" in untiled[-1]
    both = steps(NONE, MemoryOptions(vae_tiling=False, cpu_offload="model"))
    assert both == ["stop: ALICE_VAE_TILING=false is set explicitly: no VAE tiling is tried; "
                    "ALICE_CPU_OFFLOAD=model is set explicitly: no other offload is tried"]


def test_a_compiled_unet_stops_before_sequential_offload_and_the_cpu_only_tiles():
    compiled = steps(NONE, MemoryOptions(compile_unet=True))
    assert compiled[-2:] == ["model+tiling", "stop: model+tiling is the cheapest layout"]
    on_cpu = steps(NONE, gpu=False)
    assert on_cpu == ["none+tiling", "stop: on the CPU nothing can be offloaded"]


def test_a_transformer_family_walks_the_planned_layouts():
    planned = plan_preset(BIG_CARD, reference_inputs("zimage"), MemoryOptions(max_pixels=512 * 512), torch.bfloat16)
    assert layout_name(planned) == "gpu"
    assert steps(planned, side=512) == ["text-offloaded", "text-cpu", "model", "group", "sequential",
                                        "stop: sequential is the cheapest layout"]
    text_offloaded = cheaper_layout(planned, MemoryOptions(), gpu=True, width=512, height=512).preset
    assert dict(text_offloaded.parts) == {"transformer": "gpu", "text_encoder": "group", "vae": "gpu"}
    assert text_offloaded.cpu_offload == "group" and not text_offloaded.pin_streams
    assert "after running out of memory" in text_offloaded.reason
    text_cpu = cheaper_layout(text_offloaded, MemoryOptions(), gpu=True, width=512, height=512).preset
    assert dict(text_cpu.parts) == {"transformer": "gpu", "text_encoder": "cpu", "vae": "gpu"}  # run in RAM
    assert text_cpu.cpu_offload == "none" and layout_name(text_cpu) == "text-cpu"
    # An NF4 transformer is never streamed block by block: the walk ends at model offload.
    nf4 = replace(planned, quantize="nf4")
    assert steps(nf4, side=512) == ["text-offloaded", "text-cpu", "model", "stop: model is the cheapest layout"]


# -- on the real demo pipeline --------------------------------------------------------------------
SPEC = GenerationSpec(prompt="a red circle", seed=5, width=64, height=64, steps=2)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    from alice.engine.demo import save_demo_pipeline

    folder = tmp_path_factory.mktemp("demo")
    save_demo_pipeline(folder)
    return folder


def fake_card_engine(locate, options: MemoryOptions = MemoryOptions(), kept: list | None = None):
    """A DiffusersEngine that plans for a large card and runs on the CPU."""
    from alice.engine.engine import DiffusersEngine
    from alice.engine.pipelines import DevicePlacement

    return DiffusersEngine(
        locate, DevicePlacement("cpu", torch.float32, BIG_CARD), options=options,
        on_cheaper_layout=lambda name, layout: (kept if kept is not None else []).append((name, layout)),
    )


@contextlib.contextmanager
def out_of_memory_unless(fits, module_class_name: str = "UNet2DConditionModel") -> Iterator[list[str]]:
    """Every `module_class_name` in the process runs out of memory when `fits(module)` is false;
    yields the list of layouts it refused (one entry per injected error)."""
    refused: list[str] = []

    def hook(module: torch.nn.Module, args: object) -> None:
        if type(module).__name__ == module_class_name and not fits(module):
            refused.append(type(module).__name__)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield refused
    finally:
        handle.remove()


def model_offloaded(module: torch.nn.Module) -> bool:
    return hasattr(module, "_hf_hook")  # accelerate's hook, which model CPU offload installs


def draw(engine, spec: GenerationSpec = SPEC) -> np.ndarray:
    [out] = engine.generate("demo", [BatchEntry(spec)], loras=[], max_images=1, should_stop=lambda: None)
    return np.asarray(out.images[0])


@pytest.fixture(scope="module")
def engine(demo_folder):
    kept: list = []
    engine = fake_card_engine(lambda name: demo_folder, kept=kept)
    engine.kept = kept
    return engine


def test_an_image_that_runs_out_of_memory_is_drawn_in_the_next_layout_which_is_kept(engine, caplog):
    planned = draw(engine)  # as loaded: everything "on the card"
    loaded = engine.get("demo")
    assert loaded.preset.cpu_offload == "none" and not model_offloaded(loaded.pipe.unet)
    with out_of_memory_unless(model_offloaded) as refused, caplog.at_level(logging.WARNING, "alice.engine"):
        first = draw(engine)
        assert refused == ["UNet2DConditionModel"]  # once, in the planned layout
        second = draw(engine)
        assert refused == ["UNet2DConditionModel"]  # straight to the kept layout
    # model offload on the CPU moves nothing and computes the same: the same pixels
    np.testing.assert_array_equal(first, planned)
    np.testing.assert_array_equal(second, planned)
    # ALICE's own (bitsandbytes, once imported by diffusers' offload, warns of a missing `kernels` on the CPU).
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "alice.engine"]
    assert "model demo ran out of memory drawing a 64x64 image in layout none" in warning
    assert "drawing it again in layout model (model offload)" in warning  # 64 px: no tiling step
    assert engine.kept == [("demo", "model")]
    assert engine.kept_layouts() == {"demo": [{
        "from_size": "64x64", "from_pixels": 4096, "layout": "model",
        "cpu_offload": "model", "vae_tiling_above_px": None, "attention_slicing": False, "channels_last": True,
    }]}
    # Larger images keep it; a smaller one is laid out as planned again (which fits it).
    assert model_offloaded(engine.get_for_size("demo", 96, 96).pipe.unet)
    assert not model_offloaded(engine.get_for_size("demo", 48, 48).pipe.unet)
    assert engine.get("demo").current_layout == loaded.preset
    assert engine.get_for_size("demo", 64, 64).current_layout.cpu_offload == "model"


def test_out_of_memory_in_every_layout_fails_as_before(engine, caplog):
    from alice.engine.engine import OutOfMemory

    assert engine.get_for_size("demo", 64, 64).current_layout.cpu_offload == "model"  # kept above
    # At the text encoder, the first part to run: sequential offload's own hooks fail on the CPU.
    with out_of_memory_unless(lambda module: False, "CLIPTextModel") as refused, \
            caplog.at_level(logging.WARNING, "alice.engine"):
        with pytest.raises(OutOfMemory):
            draw(engine)  # model, then once more one cheaper: sequential
        assert len(refused) == 2
        with pytest.raises(OutOfMemory):
            draw(engine)  # sequential is the cheapest: no retry
        assert len(refused) == 3
    assert hasattr(engine.get("demo").pipe.unet, "_hf_hook")  # sequential offload's hooks are on
    assert engine.get("demo").current_layout.cpu_offload == "sequential"
    assert "no cheaper layout: sequential is the cheapest layout" in caplog.records[-1].getMessage()
    assert engine.kept == [("demo", "model"), ("demo", "sequential")]


def test_an_explicit_offload_setting_stops_escalation_and_the_log_says_so(demo_folder, caplog):
    from alice.engine.engine import OutOfMemory

    pinned = fake_card_engine(lambda name: demo_folder, MemoryOptions(cpu_offload="none"))
    with out_of_memory_unless(lambda module: False) as refused, caplog.at_level(logging.WARNING, "alice.engine"):
        with pytest.raises(OutOfMemory):
            draw(pinned)
    assert len(refused) == 1 and pinned.kept_layouts() == {}
    assert "ALICE_CPU_OFFLOAD=none is set explicitly" in caplog.records[-1].getMessage()
