"""Memory presets of the transformer families on cards this machine does not have (DeviceFacts faked).

Checks the decisions by the estimates in alice/engine/memory_figures.py: the plan's GTX 1060 6 GB
with 16 GiB RAM gets a fitting preset for FLUX.1-schnell as GGUF Q4 and SD 3.5 Medium, and a model
that cannot fit is refused with what would, before any weight is read.
"""

from __future__ import annotations

import pytest

from alice.engine.device import GiB, DeviceFacts, MemoryOptions, card_capacity
from alice.engine.memory_figures import GB, QWEN3_8B, TRANSFORMER_FAMILIES, transformer_working
from alice.engine.presets import (
    PresetDoesNotFit,
    check_fits,
    plan_preset,
    preset_for,
    ram_capacity,
    reference_inputs,
)

CU126 = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")


def gpu(name: str, capability: tuple[int, int], total: int, ram_gib: int) -> DeviceFacts:
    return DeviceFacts(
        device="cuda:0", name=name, capability=capability, total_memory=total, arch_list=CU126,
        host_memory=ram_gib * GiB, free_memory=total - int(0.35 * GiB),
    )


# Total memory as torch reports it for each card.
CARDS = {
    "6gb": ("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6_367_543_296, "float16"),
    "12gb": ("NVIDIA GeForce RTX 3060", (8, 6), 12_622_168_064, "bfloat16"),
    "24gb": ("NVIDIA GeForce RTX 4090", (8, 9), 25_393_692_672, "bfloat16"),
    "80gb": ("NVIDIA H100 80GB HBM3", (9, 0), 85_031_714_816, "bfloat16"),
}
GTX_1060_16GB = gpu(*CARDS["6gb"][:3], ram_gib=16)
FLUX_SCHNELL_Q4_0 = reference_inputs("flux1-schnell", transformer_bytes=int(6.77 * GB), quantized="gguf")


def card(size: str, ram_gib: int) -> tuple[DeviceFacts, str]:
    name, capability, total, dtype = CARDS[size]
    return gpu(name, capability, total, ram_gib), dtype


def plan(facts: DeviceFacts, inputs, dtype: str = "float16", **options):
    return plan_preset(facts, inputs, MemoryOptions(**options), dtype)


def where(preset) -> dict[str, str]:
    return dict(preset.parts)


def assert_fits(preset, facts: DeviceFacts) -> None:
    assert preset.fits, preset.reason
    needs = preset.needs
    assert needs.on_card + needs.working <= card_capacity(facts)
    assert needs.in_ram <= ram_capacity(facts)


# -- the plan's card ----------------------------------------------------------------------------
def test_flux_schnell_gguf_q4_fits_a_gtx_1060_with_16gb_of_ram():
    chosen = plan(GTX_1060_16GB, FLUX_SCHNELL_Q4_0)
    assert_fits(chosen, GTX_1060_16GB)
    # 6.8 GB of transformer does not fit a 5.9 GiB card: it streams in block by block; a 16-bit T5
    # (9.5 GB) beside it would not fit 16 GiB of RAM, an fp8 one does.
    assert where(chosen) == {"transformer": "group", "text_encoder": "group", "text_encoder_2": "group", "vae": "gpu"}
    assert chosen.fp8_storage == ("text_encoder", "text_encoder_2")
    assert chosen.cpu_offload == "group" and chosen.dtype == "float16"
    assert "GGUF dequantized in PyTorch" in chosen.reason  # no fast kernels before 7.0
    assert "fp16, no bf16 before compute capability 8.0" in chosen.reason


def test_sd35_medium_on_a_gtx_1060_runs_its_text_encoders_on_the_cpu():
    chosen = plan(GTX_1060_16GB, reference_inputs("sd3"))
    assert_fits(chosen, GTX_1060_16GB)
    # The 4.9 GB transformer stays whole on the card only without the two T5 layers streaming keeps
    # there: T5 (and the CLIPs) run in RAM in bf16, 11.2 GB of 16 GiB; nothing moves per image.
    assert where(chosen) == {"transformer": "gpu", "text_encoder": "cpu", "text_encoder_2": "cpu",
                             "text_encoder_3": "cpu", "vae": "gpu"}
    assert chosen.cpu_offload == "none" and chosen.fp8_storage == () and chosen.quantize is None
    assert "text encoders run on the CPU" in chosen.reason
    shown = chosen.public()  # as /health's memory_preset shows it
    assert shown["parts"]["text_encoder_3"] == "cpu" and shown["quantize"] is None
    assert "fp16 untested for this transformer" in chosen.reason
    # Without the CPU layout it would be whole-part offload (T5 onto the card for every new prompt).
    assert plan(GTX_1060_16GB, reference_inputs("sd3"), cpu_offload="model").fits


def test_with_more_ram_the_1060_keeps_the_text_encoders_in_16_bits():
    facts, dtype = card("6gb", 32)
    for inputs in (FLUX_SCHNELL_Q4_0, reference_inputs("sd3")):
        chosen = plan(facts, inputs, dtype)
        assert_fits(chosen, facts)
        assert chosen.fp8_storage == ()


# -- the decision table -------------------------------------------------------------------------
@pytest.mark.parametrize("ram", [16, 32, 64])
@pytest.mark.parametrize("size", list(CARDS))
@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_every_family_on_every_card_fits_or_says_what_would(family, size, ram):
    facts, dtype = card(size, ram)
    chosen = plan(facts, reference_inputs(family), dtype)
    if chosen.fits:
        assert_fits(chosen, facts)
        assert chosen.reason.startswith(family) and "estimated peak" in chosen.reason
    else:
        assert "quantized transformer file" in chosen.reason or "GiB of RAM" in chosen.reason
        with pytest.raises(PresetDoesNotFit):
            check_fits(chosen)


@pytest.mark.parametrize("family", TRANSFORMER_FAMILIES)
def test_an_80gb_card_holds_every_family_whole(family):
    facts, dtype = card("80gb", 16)  # nothing in RAM: 16 GiB are enough
    chosen = plan(facts, reference_inputs(family), dtype)
    assert set(where(chosen).values()) == {"gpu"} and chosen.vae_tiling_above is None
    assert chosen.cpu_offload == "none" and chosen.fp8_storage == ()


def test_a_24gb_card():
    facts, dtype = card("24gb", 32)
    for family in ("sd3", "zimage", "flux2-klein"):  # 4.9, 12.3, 7.8 GB transformers with their encoders
        assert set(where(plan(facts, reference_inputs(family), dtype)).values()) == {"gpu"}
    flux = plan(facts, reference_inputs("flux1-dev"), dtype)  # 23.8 GB of bf16 transformer stays, T5 streams
    assert where(flux) == {"transformer": "gpu", "text_encoder": "group", "text_encoder_2": "group", "vae": "gpu"}
    assert flux.vae_tiling_above is not None  # what is left of the card decodes in tiles
    assert not plan(facts, reference_inputs("qwen-image"), dtype, quantize="none").fits  # 40.9 GB
    roomy = card("24gb", 64)[0]
    assert plan(roomy, reference_inputs("qwen-image"), dtype, quantize="none").fits  # streamed from 64 GiB
    nf4 = plan(facts, reference_inputs("qwen-image"), dtype)  # auto: 11.5 GB of NF4 stays on the card
    assert nf4.quantize == "nf4" and where(nf4)["transformer"] == "gpu"


def test_a_12gb_card_keeps_a_gguf_flux_and_streams_the_text_encoders():
    facts, dtype = card("12gb", 32)
    chosen = plan(facts, reference_inputs("flux1-dev", transformer_bytes=int(6.81 * GB), quantized="gguf"), dtype)
    assert where(chosen)["transformer"] == "gpu" and where(chosen)["text_encoder_2"] == "group"
    assert "GGUF dequantized" not in chosen.reason  # an 8.6 card has the fast kernels' capability
    bf16 = plan(facts, reference_inputs("flux1-dev"), dtype, quantize="none")
    assert where(bf16)["transformer"] == "group"  # 23.8 GB streams from 32 GiB of RAM


# -- told apart by their size -------------------------------------------------------------------
def test_sd35_large_is_sized_by_its_parameters_not_the_family():
    large = reference_inputs("sd3", transformer_params=int(8.15e9))
    assert large.transformer_bytes == int(16.3e9)
    pixels = 1024 * 1024
    assert transformer_working("sd3", int(8.15e9), pixels) > transformer_working("sd3", int(2.47e9), pixels)
    facts, dtype = card("24gb", 32)
    assert where(plan(facts, reference_inputs("sd3"), dtype))["text_encoder_3"] == "gpu"
    assert where(plan(facts, large, dtype))["text_encoder_3"] == "group"  # 16.3 GB leave no room for T5


def test_flux2_klein_9b_with_its_qwen3_8b():
    nine = reference_inputs("flux2-klein", transformer_params=int(9.08e9), text_encoders={"text_encoder": QWEN3_8B})
    facts, dtype = card("24gb", 32)
    assert set(where(plan(facts, reference_inputs("flux2-klein"), dtype)).values()) == {"gpu"}
    assert where(plan(facts, nine, dtype))["text_encoder"] == "group"  # 18 + 16.4 GB


# -- refusing what cannot fit ---------------------------------------------------------------------
def test_flux_dev_in_bf16_on_a_1060_is_refused_naming_what_would_fit():
    chosen = plan(GTX_1060_16GB, reference_inputs("flux1-dev"), quantize="none")
    assert not chosen.fits
    with pytest.raises(PresetDoesNotFit) as refused:
        check_fits(chosen)
    message = str(refused.value)
    assert message.startswith("flux1-dev with a 16-bit transformer of 23.8 GB does not fit")
    assert "GTX 1060" in message and "16 GiB RAM" in message
    assert "GGUF Q5_K_S (8.29 GB), Q4_K_S (6.81 GB)" in message  # files that would, from families.md
    assert "GiB of RAM" in message  # or enough RAM to stream the 16-bit one
    assert chosen.public()["fits"] is False and chosen.public()["reason"] == message


def test_a_family_without_listed_gguf_files_gets_an_estimated_size():
    chosen = plan(GTX_1060_16GB, reference_inputs("qwen-image"))
    assert not chosen.fits
    assert "for scale, a GGUF Q4_0 of it is about 11.7 GB" in chosen.reason


def test_nf4_needs_pascal_or_newer():
    maxwell = gpu("NVIDIA GeForce GTX 980 Ti", (5, 2), 6_442_450_944, ram_gib=64)
    chosen = plan(maxwell, reference_inputs("flux1-dev", transformer_bytes=int(6.7 * GB), quantized="nf4"))
    assert not chosen.fits
    assert ("NF4 (bitsandbytes) needs a CUDA card of compute capability 6.0 or newer, "
            "NVIDIA GeForce GTX 980 Ti has 5.2") in chosen.reason
    klein = reference_inputs("flux2-klein", transformer_bytes=int(2.2 * GB), quantized="nf4")
    assert plan(GTX_1060_16GB, klein).fits and not plan(maxwell, klein).fits


def test_the_cpu_keeps_every_part_in_ram_in_fp32():
    cpu = DeviceFacts(device="cpu", host_memory=64 * GiB)
    chosen = plan(cpu, reference_inputs("sd3"), "float32")
    assert set(where(chosen).values()) == {"cpu"} and chosen.dtype == "float32" and chosen.cpu_offload == "none"
    small = DeviceFacts(device="cpu", host_memory=16 * GiB)
    refused = plan(small, reference_inputs("flux1-dev"), "float32")  # 47.6 GB in fp32
    assert not refused.fits and "GiB of RAM" in refused.reason


# -- settings, and how it is shown ------------------------------------------------------------------
def test_explicit_settings_win_over_auto():
    facts, dtype = card("80gb", 64)
    chosen = plan(facts, reference_inputs("flux1-dev"), dtype, cpu_offload="model", vae_tiling=True)
    assert set(where(chosen).values()) == {"model"} and chosen.cpu_offload == "model"
    assert chosen.vae_tiling_above == 1024
    refused = plan(GTX_1060_16GB, FLUX_SCHNELL_Q4_0, cpu_offload="none")  # the 6.8 GB cannot stay on the card
    assert not refused.fits


def test_preset_for_plans_the_reference_checkpoint_for_health():
    facts, _ = card("12gb", 32)
    import torch

    chosen = preset_for(facts, "flux1-schnell", MemoryOptions(), torch.bfloat16)
    assert chosen == plan(facts, reference_inputs("flux1-schnell"), "bfloat16")
    shown = chosen.public()
    assert {"cpu_offload", "vae_tiling_above_px", "parts", "fp8_storage", "dtype", "fits", "reason"} <= set(shown)
    # 23.8 GB of bf16 would stream every step from 32 GiB: quantized to NF4 (6.7 GB) it stays.
    assert shown["parts"]["transformer"] == "gpu" and shown["dtype"] == "bfloat16" and shown["quantize"] == "nf4"
    assert chosen.describe() == chosen.reason


# -- NF4 at load (ALICE_QUANTIZE) and the text encoders on the CPU ------------------------------------
def test_auto_quantizes_a_bf16_flux_to_nf4_on_a_12gb_card_where_16_bits_would_stream():
    facts, dtype = card("12gb", 32)
    chosen = plan(facts, reference_inputs("flux1-dev"), dtype)
    assert_fits(chosen, facts)
    assert chosen.quantize == "nf4" and where(chosen)["transformer"] == "gpu"
    # 11.9B weights at 4.5 bits (NF4_BYTES_PER_PARAM): what the planner held on the card.
    assert "16-bit transformer quantized to NF4 at load, 6.7 GB" in chosen.reason
    assert chosen.needs.on_card < 8 * GB
    assert plan(facts, reference_inputs("flux1-dev"), dtype, quantize="none").quantize is None
    pinned = plan(facts, reference_inputs("flux1-dev"), dtype, cpu_offload="group")  # the operator's own layout
    assert pinned.quantize is None and where(pinned)["transformer"] == "group"


def test_auto_leaves_what_fits_whole_in_16_bits_and_nf4_forces_it():
    facts, dtype = card("24gb", 32)
    assert plan(facts, reference_inputs("flux1-dev"), dtype).quantize is None  # 23.8 GB stays, T5 streams
    forced = plan(facts, reference_inputs("flux1-dev"), dtype, quantize="nf4")
    assert forced.quantize == "nf4" and set(where(forced).values()) == {"gpu"}  # now T5 fits beside it
    gguf = plan(facts, FLUX_SCHNELL_Q4_0, dtype, quantize="nf4")
    assert gguf.quantize is None  # a GGUF file is quantized already: nothing to do at load


def test_nf4_stays_whole_on_the_card_never_streamed():
    # diffusers' group offload would leave bitsandbytes' quantization state in RAM: an NF4 FLUX.1
    # (6.7 GB) does not fit a 5.9 GiB card whole, so a 1060 streams 16 bits (32 GiB) or refuses.
    nf4 = reference_inputs("flux1-dev", transformer_bytes=int(6.7 * GB), quantized="nf4")
    refused = plan(GTX_1060_16GB, nf4)
    assert not refused.fits and "GGUF Q3_K_S (5.23 GB)" in refused.reason  # a (smaller) GGUF streams: it would do
    assert plan(GTX_1060_16GB, reference_inputs("flux1-dev")).quantize is None
    facts, dtype = card("6gb", 32)
    assert where(plan(facts, reference_inputs("flux1-dev"), dtype))["transformer"] == "group"  # 16 bits
    # Klein 4B as NF4 (2.2 GB) stays on that card whole, where its 7.8 GB of bf16 would stream.
    klein = plan(GTX_1060_16GB, reference_inputs("flux2-klein"))
    assert_fits(klein, GTX_1060_16GB)
    assert klein.quantize == "nf4" and where(klein)["transformer"] == "gpu"


def test_nf4_at_load_is_never_planned_on_the_cpu_or_before_pascal():
    cpu = DeviceFacts(device="cpu", host_memory=64 * GiB)
    assert plan(cpu, reference_inputs("sd3"), "float32").quantize is None
    refused = plan(cpu, reference_inputs("sd3"), "float32", quantize="nf4")
    assert not refused.fits and "diffusers 0.42.1 does not quantize without a GPU" in refused.reason
    maxwell = gpu("NVIDIA GeForce GTX 980 Ti", (5, 2), 6_442_450_944, ram_gib=64)
    assert plan(maxwell, reference_inputs("flux2-klein")).quantize is None  # streams in 16 bits instead


@pytest.mark.parametrize("ram", [16, 32])
def test_text_encoders_on_the_cpu_need_their_bf16_bytes_of_ram(ram):
    facts, dtype = card("6gb", ram)
    chosen = plan(facts, reference_inputs("sd3"), dtype)
    assert where(chosen)["text_encoder_3"] == "cpu"
    assert chosen.needs.in_ram == sum(reference_inputs("sd3").text_encoders.values())  # bf16, T5's wo too
    assert chosen.needs.on_card + chosen.needs.working <= card_capacity(facts)
    # On a card with room the encoders stream instead (faster for a new prompt).
    assert where(plan(card("12gb", ram)[0], reference_inputs("sd3"), "bfloat16"))["text_encoder_3"] == "group"
