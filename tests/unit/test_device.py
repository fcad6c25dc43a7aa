"""Device decisions for cards this machine does not have: each card is described by its facts.

The figures are those torch reports for the real cards (total memory as
`torch.cuda.get_device_properties(i).total_memory` gives it; free memory as `mem_get_info` after
the CUDA context, on a card no other process uses).
"""

from __future__ import annotations

import pytest
import torch

from alice.engine import device as device_module
from alice.engine.memory_figures import TRANSFORMER_FAMILIES
from alice.engine.device import (
    FAMILIES,
    CacheCapacity,
    DeviceFacts,
    MemoryOptions,
    UnsupportedDevice,
    cache_capacity,
    check_device_supported,
    footprint,
    read_device_facts,
    resolve_preset,
    torch_can_drive,
)
from alice.engine.pipelines import choose_placement

GiB = 1024**3
# torch 2.13's PyPI wheels (CUDA 13) and its CUDA 12.6 builds, as torch.cuda.get_arch_list() prints them.
CU130 = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")
CU126 = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")  # sm_60 runs on a 6.1 card


def gpu(name: str, capability: tuple[int, int], total: int, ram_gib: int = 32, arch_list=CU130) -> DeviceFacts:
    return DeviceFacts(
        device="cuda:0", name=name, capability=capability, total_memory=total, arch_list=arch_list,
        host_memory=ram_gib * GiB, free_memory=total - int(0.35 * GiB),
    )


GTX_1060 = gpu("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6_367_543_296, ram_gib=16, arch_list=CU126)
T4 = gpu("Tesla T4", (7, 5), 15_828_320_256)
RTX_3060 = gpu("NVIDIA GeForce RTX 3060", (8, 6), 12_622_168_064)
H100 = gpu("NVIDIA H100 80GB HBM3", (9, 0), 85_031_714_816, ram_gib=256)
CPU = DeviceFacts(device="cpu", host_memory=32 * GiB)
CARDS = {"gtx1060": GTX_1060, "t4": T4, "rtx3060": RTX_3060, "h100": H100}


def preset(facts: DeviceFacts, family: str, **options):
    placement = choose_placement(facts=facts)
    return resolve_preset(facts, family, MemoryOptions(**options), placement.dtype)


# -- precision -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("facts", "dtype"),
    [
        (GTX_1060, torch.float16), (T4, torch.float16), (RTX_3060, torch.bfloat16), (H100, torch.bfloat16),
        (CPU, torch.float32),
    ],
)
def test_auto_dtype_is_bf16_from_ampere_on_only(facts, dtype):
    """torch.cuda.is_bf16_supported() is true on Pascal and Turing too (emulated): not the test."""
    placement = choose_placement("auto", "auto", facts=facts)
    assert placement.dtype == dtype
    assert placement.device == facts.device


def test_an_explicit_dtype_is_kept():
    assert choose_placement(dtype="float32", facts=GTX_1060).dtype == torch.float32


# -- can the installed torch drive the card ------------------------------------------------------
def test_the_cuda13_build_refuses_a_gtx_1060_naming_the_cu126_flavour():
    facts = gpu("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6_367_543_296, arch_list=CU130)
    with pytest.raises(UnsupportedDevice) as refused:
        check_device_supported(facts)
    first_line, details = str(refused.value).split("\n")  # /health shows the first line
    assert first_line.startswith("use the cu126 image/flavour (torch CUDA 12.6 build with sm_50/sm_60/sm_70 kernels)")
    assert "GTX 1060" in first_line and "6.1" in first_line
    assert "alice:cu126" in details and "deploy/install.sh --flavour cu126" in details and "sm_75" in details


def test_the_cu126_build_drives_a_gtx_1060():
    check_device_supported(GTX_1060)  # no exception


@pytest.mark.parametrize(
    ("capability", "arch_list", "runs"),
    [
        ((6, 1), CU126, True),
        ((5, 2), CU126, True),  # GTX 9xx
        ((7, 0), CU126, True),  # V100
        ((6, 1), CU130, False),
        ((7, 0), CU130, False),  # V100
        ((7, 5), CU130, True),
        ((8, 9), CU130, True),  # sm_86 kernels run on 8.9 (same major, older minor)
        ((12, 1), CU130, True),
        ((13, 0), CU130, True),  # compute_120 PTX is compiled for newer cards on first use
        ((10, 0), ("sm_90",), False),  # an sm_ kernel of another major does not run
        ((6, 0), ("sm_61",), False),  # nor one of a newer minor
        ((13, 0), ("sm_90", "compute_90"), True),  # PTX is compiled for newer cards on first use
    ],
)
def test_arch_list_rules(capability, arch_list, runs):
    assert torch_can_drive(capability, arch_list) is runs


def test_a_newer_card_on_the_cu126_build_is_told_to_use_the_default_image():
    facts = gpu("NVIDIA GeForce RTX 5090", (12, 0), 34_190_917_632, arch_list=CU126)
    with pytest.raises(UnsupportedDevice, match="alice:latest"):
        check_device_supported(facts)


def test_an_unsupported_card_shows_on_health_and_in_the_log(monkeypatch, tmp_path, caplog):
    from alice.config import Settings
    from alice.serving.runtime import Runtime

    FakeCards(monkeypatch, arch_list=CU130)
    runtime = Runtime(Settings(device="cuda:1", data_dir=tmp_path))
    runtime.worker.load_default_model()  # the warm-up, on the worker
    health = runtime.health()
    assert health["status"] == "error" and not runtime.ready
    assert "use the cu126 image/flavour" in health["error"] and "GTX 1060" in health["error"]
    assert "alice:cu126" in caplog.text


def test_loading_on_an_unsupported_card_fails_before_touching_it(tmp_path):
    """The warm-up's load stops with the reason (for /health and the log), not with CUDA's
    "no kernel image is available" at the first generation."""
    from alice.engine.pipelines import load_pipeline

    refused = gpu("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6_367_543_296, arch_list=CU130)
    with pytest.raises(UnsupportedDevice, match="cu126"):
        load_pipeline(tmp_path, choose_placement(facts=refused))


# -- the configured card, not device 0 -----------------------------------------------------------
class FakeCards:
    """Two cards as torch.cuda would report them: an Ampere card at 0, a GTX 1060 at 1."""

    cards = {
        0: ("NVIDIA A100-SXM4-40GB", (8, 0), 42_298_834_944),
        1: ("NVIDIA GeForce GTX 1060 6GB", (6, 1), 6_367_543_296),
    }

    def __init__(self, monkeypatch, arch_list=CU126):
        self.asked: list[object] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated on Pascal
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
        monkeypatch.setattr(torch.cuda, "get_device_properties", self._properties)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: self._card(device)[1])
        monkeypatch.setattr(torch.cuda, "mem_get_info", self._memory)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self._card(device)[2] // 4)

    def _card(self, device):
        self.asked.append(device)
        index = device if isinstance(device, int) else (torch.device(device).index if device is not None else None)
        return self.cards[0 if index is None else index]

    def _memory(self, device=None):
        total = self._card(device)[2]
        return total - int(0.35 * GiB), total  # free after the CUDA context, total

    def _properties(self, device):
        name, (major, minor), total = self._card(device)
        return type("Properties", (), {"name": name, "major": major, "minor": minor, "total_memory": total})()


def test_the_facts_are_read_from_the_configured_card(monkeypatch):
    cards = FakeCards(monkeypatch)
    facts = read_device_facts("cuda:1")
    assert (facts.device, facts.name, facts.capability, facts.total_memory) == (
        "cuda:1", "NVIDIA GeForce GTX 1060 6GB", (6, 1), 6_367_543_296
    )
    assert cards.asked and all(device in (1, "cuda:1") for device in cards.asked)
    assert read_device_facts("cuda").device == "cuda:0"  # plain cuda: the current device


def test_auto_dtype_is_judged_on_the_configured_card_not_device_0(monkeypatch):
    FakeCards(monkeypatch)
    assert choose_placement("cuda:1", "auto").dtype == torch.float16  # device 0 would say bf16
    assert choose_placement("cuda:0", "auto").dtype == torch.bfloat16


def test_memory_metrics_read_the_configured_card(monkeypatch, tmp_path):
    from alice.config import Settings
    from alice.serving.runtime import Runtime

    cards = FakeCards(monkeypatch)
    runtime = Runtime(Settings(device="cuda:1", data_dir=tmp_path))
    cards.asked.clear()
    gpu_memory = runtime.metrics_summary()["gpu_memory"]
    runtime.views.update_gauges()
    assert gpu_memory["total_bytes"] == 6_367_543_296
    assert cards.asked and all(device in (1, "cuda:1") for device in cards.asked)
    health = runtime.health()
    assert health["device"] == "cuda:1" and health["dtype"] == "float16"
    assert health["gpu_available"] is True and health["status"] == "loading"  # SAM's fields stay
    assert set(health["memory_preset"]) == {*FAMILIES, *TRANSFORMER_FAMILIES}
    # A transformer family's entry says where each part lives and why (for its released checkpoint).
    assert all({"parts", "fits", "reason"} <= set(health["memory_preset"][family]) for family in TRANSFORMER_FAMILIES)
    assert health["memory_preset"]["sd15"] == {
        "cpu_offload": "none", "vae_tiling_above_px": None, "attention_slicing": False, "channels_last": False
    }


# -- memory presets -------------------------------------------------------------------------------
def test_a_6gb_card_runs_sd1_and_sd2_whole_and_sdxl_offloaded():
    for family in ("sd15", "sd2"):
        chosen = preset(GTX_1060, family)
        assert chosen.cpu_offload == "none" and not chosen.attention_slicing
        assert not chosen.channels_last  # Pascal has no tensor cores for NHWC kernels
    assert preset(GTX_1060, "sd15").vae_tiling_above is None  # a 1024x1024 decode fits next to 2 GiB
    sdxl = preset(GTX_1060, "sdxl")
    assert sdxl.cpu_offload == "model"  # 6.5 GiB of weights: only the 4.8 GiB UNet fits at once
    # Its VAE decodes in fp32 (force_upcast): 4.8 GiB at 1024x1024 by bench.memory's figures, which
    # fits once the UNet is back in RAM. Its UNet (4.8 GiB) leaves 0.65 GiB for steps: 1024x1024's
    # 0.46 GiB fits, 1536x1536's 1.04 GiB does not (layer by layer then).
    assert sdxl.vae_tiling_above is None
    assert preset(GTX_1060, "sdxl", max_pixels=1536 * 1536).cpu_offload == "sequential"
    assert not sdxl.attention_slicing
    for family in FAMILIES:  # what was chosen fits, by the estimates
        chosen = preset(GTX_1060, family)
        needs = footprint(chosen, GTX_1060, torch.float16, 1024 * 1024)
        assert needs.on_card + needs.working <= card_bytes(GTX_1060)


def test_a_6gb_card_tiles_large_sd15_images():
    """Allowed 1536x1536 images would not decode whole next to the weights: tiles that do."""
    chosen = preset(GTX_1060, "sd15", max_pixels=1536 * 1536)
    assert chosen.cpu_offload == "none"
    assert chosen.vae_tiling_above is not None and 512 <= chosen.vae_tiling_above < 1536


@pytest.mark.parametrize("card", ["t4", "rtx3060", "h100"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cards_of_12gb_and_more_need_no_memory_savings(card, family):
    chosen = preset(CARDS[card], family)
    assert (chosen.cpu_offload, chosen.vae_tiling_above, chosen.attention_slicing, chosen.channels_last) == (
        "none", None, False, True
    )


def test_the_cpu_gets_no_gpu_layout():
    for family in FAMILIES:
        chosen = preset(CPU, family)
        assert (chosen.cpu_offload, chosen.vae_tiling_above, chosen.channels_last) == ("none", None, False)


def test_explicit_settings_win_over_auto():
    chosen = preset(H100, "sd15", cpu_offload="model", vae_tiling=True, attention_slicing=True)
    assert (chosen.cpu_offload, chosen.vae_tiling_above, chosen.attention_slicing) == ("model", 512, True)
    assert preset(GTX_1060, "sdxl", vae_tiling=False).vae_tiling_above is None


def test_a_gtx_16xx_computes_in_fp32_where_fp16_turns_black():
    gtx_1660 = gpu("NVIDIA GeForce GTX 1660 SUPER", (7, 5), 6_222_839_808, arch_list=CU126)
    assert choose_placement(facts=gtx_1660).dtype == torch.float32
    assert choose_placement(facts=T4).dtype == torch.float16  # Turing with tensor cores: fp16 is fine
    assert choose_placement(dtype="float16", facts=gtx_1660).dtype == torch.float16  # ALICE_DTYPE wins


def test_channels_last_is_on_where_tensor_cores_are():
    gtx_1660 = gpu("NVIDIA GeForce GTX 1660 SUPER", (7, 5), 6_222_839_808, arch_list=CU126)  # TU116: none
    volta = gpu("Tesla V100-SXM2-16GB", (7, 0), 16_935_682_048, arch_list=CU126)
    assert [preset(card, "sd15").channels_last for card in (GTX_1060, gtx_1660, volta, T4, RTX_3060, H100)] == [
        False, False, True, True, True, True]
    assert preset(GTX_1060, "sd15", channels_last=True).channels_last is True  # an explicit setting wins
    assert preset(H100, "sd15", channels_last=False).channels_last is False


def test_channels_last_is_not_applied_under_sequential_offload():
    assert preset(H100, "sd15", cpu_offload="sequential").channels_last is False
    assert preset(H100, "sd15", cpu_offload="model").channels_last is True


# -- the model cache's budget ----------------------------------------------------------------------
def sd15_on(facts: DeviceFacts, **options):
    chosen = preset(facts, "sd15", **options)
    return footprint(chosen, facts, choose_placement(facts=facts).dtype, MemoryOptions(**options).max_pixels)


def test_two_sd15_models_do_not_both_stay_on_a_6gb_card():
    """2 x 2 GiB of fp16 weights fit 3/4 of the card, but a 1024x1024 generation's working
    memory and the CUDA context then do not: the second model unloads the first."""
    one = sd15_on(GTX_1060)
    capacity = cache_capacity(GTX_1060)
    assert capacity.fits([one])
    assert not capacity.fits([one, one])
    assert 2 * one.weights < 0.75 * GTX_1060.total_memory  # what the old budget let in
    assert cache_capacity(RTX_3060).fits([sd15_on(RTX_3060)] * 2)


def test_the_headroom_covers_the_largest_allowed_image():
    small = sd15_on(GTX_1060, max_pixels=512 * 512)
    large = sd15_on(GTX_1060)
    assert large.working > small.working > 0


def test_offloaded_weights_count_against_ram_not_the_card():
    chosen = preset(GTX_1060, "sdxl")
    offloaded = footprint(chosen, GTX_1060, torch.float16, 1024 * 1024)
    assert offloaded.on_card == 0 and offloaded.in_ram == offloaded.weights
    assert offloaded.working < card_bytes(GTX_1060)  # the UNet and a generation, one at a time
    roomy = CacheCapacity(card=card_bytes(GTX_1060), ram=64 * GiB)
    assert roomy.fits([offloaded, offloaded])  # the card holds neither between generations
    tight = CacheCapacity(card=card_bytes(GTX_1060), ram=8 * GiB)
    assert tight.fits([offloaded]) and not tight.fits([offloaded, offloaded])


def test_an_operator_cap_limits_all_weights():
    one = sd15_on(H100)
    assert not cache_capacity(H100, weights_cap=int(1.5 * one.weights)).fits([one, one])


def card_bytes(facts: DeviceFacts) -> int:
    return cache_capacity(facts).card


def test_the_card_budget_leaves_the_cuda_context_and_other_processes_out():
    busy = DeviceFacts(**{**GTX_1060.__dict__, "free_memory": 4 * GiB})  # a desktop holds 2 GiB
    assert card_bytes(busy) == 4 * GiB
    assert card_bytes(GTX_1060) <= GTX_1060.total_memory - device_module.CUDA_CONTEXT


@pytest.mark.parametrize(
    ("env", "value", "parsed"),
    [
        ("ALICE_VAE_TILING", "true", True),
        ("ALICE_VAE_TILING", "false", False),
        ("ALICE_VAE_TILING", "auto", "auto"),
        ("ALICE_ATTENTION_SLICING", "true", True),
        ("ALICE_CPU_OFFLOAD", "none", "none"),
        ("ALICE_CPU_OFFLOAD", "sequential", "sequential"),
        ("ALICE_QUANTIZE", "nf4", "nf4"),
        ("ALICE_QUANTIZE", "none", "none"),
    ],
)
def test_memory_settings_take_auto_and_keep_their_old_values(monkeypatch, env, value, parsed):
    from alice.config import load_settings

    monkeypatch.setenv(env, value)
    assert getattr(load_settings(), env.removeprefix("ALICE_").lower()) == parsed


def test_memory_settings_default_to_auto(monkeypatch):
    from alice.config import load_settings

    for env in ("ALICE_VAE_TILING", "ALICE_ATTENTION_SLICING", "ALICE_CPU_OFFLOAD", "ALICE_QUANTIZE"):
        monkeypatch.delenv(env, raising=False)
    settings = load_settings()
    assert (settings.vae_tiling, settings.attention_slicing, settings.cpu_offload, settings.quantize) == ("auto",) * 4
