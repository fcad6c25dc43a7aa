"""Reading A1111 and Forge `parameters` texts as settings: realistic samples, and any text at all
read without an exception (property tests)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from alice.protocol.a1111_reading import read_parameters
from alice.protocol.generation import GenerationSettings

A1111_HIRES = """masterpiece, best quality, 1girl, (looking at viewer:1.2), <lora:add_detail:0.7>
Negative prompt: EasyNegative, (worst quality, low quality:1.4), badhandv4
Steps: 28, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 2031512218, Size: 512x768, Model hash: 7f96a1a9ca, \
Model: anything-v5, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 15, \
Hires upscaler: Latent, Lora hashes: "add_detail: 7c6bad76eb54", TI hashes: "EasyNegative: c74b4e810b03", Version: v1.6.0"""

FORGE = """cinematic photo of a lighthouse at dusk
Negative prompt: cartoon
Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 12, Size: 1024x1024, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, ControlNet 0: "Module: canny, Model: diffusers_xl_canny_mid", \
Hires upscale: 1.5, Hires steps: 0, Hires upscaler: R-ESRGAN 4x+, Denoising strength: 0.3, \
Version: f2.0.1v1.10.1-previous-313-g8a042934"""

NO_HIRES_IMG2IMG = """a cat
Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: -1, Size: 512x512, \
Denoising strength: 0.6, Variation seed: 5, Variation seed strength: 0.2"""


def test_an_a1111_text_with_hires_fix_and_lora_tags():
    reading = read_parameters(A1111_HIRES)
    s = reading.settings
    assert s["prompt"].endswith("<lora:add_detail:0.7>") and s["negative_prompt"].startswith("EasyNegative, ")
    assert (s["steps"], s["scheduler"], s["guidance_scale"], s["seed"]) == (28, "dpm++_2m_karras", 7.0, 2031512218)
    assert (s["width"], s["height"], s["clip_skip"], s["model"]) == (512, 768, 2, "anything-v5")
    assert (s["hires_scale"], s["hires_steps"], s["hires_strength"], s["hires_upscaler"]) == (2.0, 15, 0.45, "latent")
    assert reading.not_honoured == ["Model hash: 7f96a1a9ca"]  # hashes and Version change nothing
    GenerationSettings.model_validate(s)  # what it read is a valid request


def test_a_forge_text_with_schedule_type_controlnet_and_an_upscaler_model():
    reading = read_parameters(FORGE)
    s = reading.settings
    assert s["scheduler"] == "dpm++_2m_karras" and s["guidance_scale"] == 4.5 and (s["width"], s["height"]) == (1024, 1024)
    assert s["hires_scale"] == 1.5 and "hires_steps" not in s and s["hires_upscaler"] == "lanczos"
    assert reading.not_honoured == [
        "Hires upscaler: R-ESRGAN 4x+ (no upscaler models here; Lanczos used)",
        "Model hash: 31e35c80fc", "ControlNet 0: Module: canny, Model: diffusers_xl_canny_mid",
    ]


def test_img2img_strength_variation_seeds_and_a_random_seed():
    reading = read_parameters(NO_HIRES_IMG2IMG)
    assert "seed" not in reading.settings and reading.settings["scheduler"] == "euler_a"
    assert "hires_scale" not in reading.settings and "strength" not in reading.settings
    assert [note.split(":")[0] for note in reading.not_honoured] == [
        "Denoising strength", "Variation seed", "Variation seed strength"]


def test_values_past_alices_limits_are_reported_not_sent():
    reading = read_parameters("a cat\nSteps: 400, Sampler: DPM++ 3M SDE, CFG scale: 7, Seed: 1, Size: 4096x4096, "
                              "Hires upscale: 8")
    assert {"steps", "width", "height", "hires_scale", "scheduler"}.isdisjoint(reading.settings)
    assert len(reading.not_honoured) == 4
    GenerationSettings.model_validate(reading.settings)


def test_hires_resize_is_a_target_size_and_0x0_is_none():
    """A1111's "Hires resize: WxH" (a target size instead of a scale): the hires_width and
    hires_height settings; one side 0 keeps the aspect; 0x0 is no resize; a target ALICE cannot
    upscale to (below the Size, past 4 times it, off the grid of 8) is named, never sent."""
    head = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x768, "
    reading = read_parameters(head + "Hires resize: 1024x1024, Hires upscaler: Latent, Denoising strength: 0.4")
    s = reading.settings
    assert (s["hires_width"], s["hires_height"], s["hires_strength"], s["hires_upscaler"]) == (1024, 1024, 0.4, "latent")
    assert "hires_scale" not in s and reading.not_honoured == []
    assert read_parameters(head + "Hires resize: 1024x0").settings["hires_width"] == 1024
    assert "hires_width" not in read_parameters(head + "Hires resize: 0x1536").settings
    none = read_parameters(head + "Hires resize: 0x0, Denoising strength: 0.4")
    assert not {"hires_scale", "hires_width", "hires_height"} & none.settings.keys()
    assert none.not_honoured == []  # "0x0" is none, and its strength is a hires fix's, not an img2img's
    both = read_parameters(head + "Hires resize: 0x0, Hires upscale: 2")
    assert both.settings["hires_scale"] == 2 and both.not_honoured == []
    for target in ("256x256", "4096x4096", "1020x1020", "big"):
        refused = read_parameters(head + f"Hires resize: {target}, Hires steps: 10")
        assert not {"hires_scale", "hires_width", "hires_height", "hires_steps"} & refused.settings.keys(), target
        assert refused.not_honoured[0].startswith(f"Hires resize: {target} ("), refused.not_honoured
    GenerationSettings.model_validate(s)


WORDS = st.sampled_from([*"ab:,\n \"\\()<>-0123456789.x", "Steps", "Size", "Hires upscale", "Hires resize", "Sampler",
                         "Negative prompt:", "Schedule type", "Karras", "Denoising strength", "<lora:"])


@settings(max_examples=300, deadline=None)
@given(st.lists(WORDS, max_size=60).map("".join) | st.text())
def test_any_text_is_read_without_an_exception_into_a_valid_request(text):
    reading = read_parameters(text)
    if reading.settings.get("prompt", "").strip():
        GenerationSettings.model_validate(reading.settings)
