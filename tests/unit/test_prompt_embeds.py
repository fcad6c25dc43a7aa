"""Weighted and long prompts on the demo model (its CLIP reads 16 tokens) and the tiny SDXL,
encoded as A1111 encodes them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.prompt_embeds import encode_prompts

SPEC = GenerationSpec(prompt="a red circle on a blue background", seed=5, width=64, height=64, steps=3,
                      scheduler="ddim")
# 20 tokens: past the demo CLIP's 14, and differing only in the last words.
LONG = "a red circle on a blue background, a red circle on a blue background, {}"


def draw(pipe, config, **change):
    return np.asarray(run_generation(pipe, config, dataclasses.replace(SPEC, **change)).images[0]).astype(int)


def test_weights_change_the_image_and_a_weight_of_one_changes_nothing(demo_pipeline):
    """Bit for bit: `(red:1.0)` is the plain prompt, which goes to diffusers as text as before."""
    pipe, config = demo_pipeline
    plain = draw(pipe, config)
    assert np.array_equal(plain, draw(pipe, config, prompt="a (red:1.0) circle on a blue background"))
    assert not np.array_equal(plain, draw(pipe, config, prompt="a (red:1.5) circle on a blue background"))
    assert not np.array_equal(plain, draw(pipe, config, prompt="a [red] circle on a blue background"))


def test_own_encoding_of_a_plain_prompt_is_diffusers_own(demo_pipeline):
    pipe, _ = demo_pipeline
    with torch.inference_mode():
        theirs, negative = pipe.encode_prompt(SPEC.prompt, "cpu", 1, True, "ugly")
        ours = encode_prompts(pipe, [SPEC.prompt], ["ugly"], None, False)
    assert torch.equal(ours["prompt_embeds"], theirs) and torch.equal(ours["negative_prompt_embeds"], negative)


def test_a_weight_multiplies_its_tokens_and_the_mean_is_restored(demo_pipeline):
    pipe, _ = demo_pipeline
    with torch.inference_mode():
        plain = pipe.text_encoder(pipe.tokenizer(SPEC.prompt, padding="max_length", return_tensors="pt").input_ids)[0]
        weighted = encode_prompts(pipe, ["a (red:1.5) circle on a blue background"], [""], None, False)["prompt_embeds"]
    red = 1 + len(pipe.tokenizer("a", add_special_tokens=False).input_ids)  # after the start token and "a"
    multipliers = torch.ones(plain.shape[1])
    multipliers[red] = 1.5
    expected = plain * multipliers[None, :, None]
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(weighted, expected)
    ratio = (weighted / plain)[0, :, 0]
    assert ratio[red] / ratio[0] == pytest.approx(1.5, rel=1e-4)


def test_long_prompts_are_read_in_chunks_to_their_end(demo_pipeline):
    pipe, config = demo_pipeline
    assert len(pipe.tokenizer(LONG.format("green square")).input_ids) > pipe.tokenizer.model_max_length
    with torch.inference_mode():
        args = encode_prompts(pipe, [LONG.format("green square")], ["blurry"], None, False)
    assert args["prompt_embeds"].shape[1] == 2 * 16 == args["negative_prompt_embeds"].shape[1]  # padded alike
    assert not np.array_equal(draw(pipe, config, prompt=LONG.format("green square")),
                              draw(pipe, config, prompt=LONG.format("blue triangle")))
    with torch.inference_mode():  # BREAK starts a chunk of its own
        assert encode_prompts(pipe, ["red BREAK blue"], [""], None, False)["prompt_embeds"].shape[1] == 32


def test_sdxl_both_encoders_weighted_pooled_left_as_a1111_leaves_it(sdxl_pipeline):
    pipe = sdxl_pipeline
    prompt = "a castle on a hill"
    with torch.inference_mode():
        theirs = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                    negative_prompt="fog")
        ours = encode_prompts(pipe, [prompt], ["fog"], None, False)
        weighted = encode_prompts(pipe, ["a (castle:1.4) on a hill"], ["fog"], None, False)
        zeros = encode_prompts(pipe, ["a (castle:1.4) on a hill"], [""], None, True)
    assert torch.equal(ours["prompt_embeds"], theirs[0]) and torch.equal(ours["negative_prompt_embeds"], theirs[1])
    assert torch.equal(ours["pooled_prompt_embeds"], theirs[2])
    assert torch.equal(ours["negative_pooled_prompt_embeds"], theirs[3])
    # Both encoders' halves change; the pooled vector is the unweighted one.
    width = pipe.text_encoder.config.hidden_size
    assert not torch.equal(weighted["prompt_embeds"][..., :width], ours["prompt_embeds"][..., :width])
    assert not torch.equal(weighted["prompt_embeds"][..., width:], ours["prompt_embeds"][..., width:])
    assert torch.equal(weighted["pooled_prompt_embeds"], ours["pooled_prompt_embeds"])
    assert not zeros["negative_prompt_embeds"].any() and not zeros["negative_pooled_prompt_embeds"].any()


def test_sdxl_draws_weights_and_long_prompts(sdxl_pipeline):
    pipe = sdxl_pipeline
    config = pipe.scheduler.config
    spec = dataclasses.replace(SPEC, prompt="a castle", scheduler="euler", steps=2)
    draw_xl = lambda prompt: np.asarray(run_generation(pipe, config, dataclasses.replace(spec, prompt=prompt)).images[0])  # noqa: E731
    plain = draw_xl("a castle")
    assert np.array_equal(plain, draw_xl("a (castle:1.0)"))
    assert not np.array_equal(plain, draw_xl("a (castle:1.6)"))
    long = "a castle on a hill " * 16  # 80 tokens: past CLIP's 75
    assert not np.array_equal(draw_xl(long + "at dawn"), draw_xl(long + "at night"))
