"""Text encoders' outputs kept per prompt (alice/engine/text_cache.py): a prompt drawn again skips
the encoders' pass and draws exactly what the bare pipeline draws; a new prompt runs them; a
LoRA empties what was kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from alice.engine.generate import GenerationSpec, run_generation
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.text_cache import _Outputs, cache_text_outputs, forget_text_outputs, text_output_hits

SETTINGS = {"width": 64, "height": 64, "steps": 2, "scheduler": "flow-euler"}


def passes(pipe: DiffusionPipeline) -> dict[str, list[int]]:
    """Count each text encoder's real passes: a hook on its last inner module (T5's stack, CLIP's
    text model or projection), which only the real forward calls (the encoder's own hooks run on
    every call, answered from memory or not)."""
    counts: dict[str, list[int]] = {}
    for name, module in pipe.components.items():
        if name.startswith("text_encoder") and isinstance(module, torch.nn.Module):
            counts[name] = [0]
            *_, inner = module.children()
            inner.register_forward_pre_hook(lambda *_, c=counts[name]: c.__setitem__(0, c[0] + 1))
    return counts


def draw(pipe: DiffusionPipeline, prompt: str, seed: int, guidance: float) -> np.ndarray:
    spec = GenerationSpec(prompt=prompt, seed=seed, guidance_scale=guidance, **SETTINGS)
    return np.asarray(run_generation(pipe, pipe.scheduler.config, spec).images[0])


def bare(folder: Path, prompt: str, seed: int, guidance: float) -> np.ndarray:
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, disable_mmap=True)
    pipe.set_progress_bar_config(disable=True)
    return np.asarray(pipe(prompt=prompt, width=64, height=64, num_inference_steps=2, guidance_scale=guidance,
                           generator=torch.Generator("cpu").manual_seed(seed)).images[0])


@pytest.mark.parametrize(("tiny", "guidance"), [("flux", 3.5), ("sd3", 7.0)])
def test_a_prompt_drawn_again_skips_the_text_encoders_and_draws_the_same(
    tiny_family: Callable[[str], Path], tiny: str, guidance: float
) -> None:
    folder = tiny_family(tiny)
    pipe = load_pipeline(folder, choose_placement("cpu"))
    counts = passes(pipe)
    draw(pipe, "a red circle", 1, guidance)
    first = {name: c[0] for name, c in counts.items()}
    assert all(first.values())  # every encoder ran for a new prompt
    again = draw(pipe, "a red circle", 2, guidance)
    assert {name: c[0] for name, c in counts.items()} == first  # none ran again
    assert text_output_hits(pipe) >= len(first)
    assert np.array_equal(again, bare(folder, "a red circle", 2, guidance))  # bit for bit
    other = draw(pipe, "a blue square", 2, guidance)
    assert all(counts[name][0] > first[name] for name in first)  # a new prompt runs them
    assert np.array_equal(other, bare(folder, "a blue square", 2, guidance))


def test_forgetting_runs_the_encoders_again(tiny_family: Callable[[str], Path]) -> None:
    pipe = load_pipeline(tiny_family("flux"), choose_placement("cpu"))
    counts = passes(pipe)
    draw(pipe, "a red circle", 1, 3.5)
    before = counts["text_encoder_2"][0]
    forget_text_outputs(pipe)  # as loras_applied does around every LoRA
    draw(pipe, "a red circle", 1, 3.5)
    assert counts["text_encoder_2"][0] == before + 1


def test_outputs_stay_within_the_budget_least_recently_used_dropped_first() -> None:
    outputs = _Outputs(budget=3 * 4 * 10)  # three outputs of ten float32s
    for key in "abc":
        outputs.put((key,), torch.zeros(10))
    outputs.get(("a",))  # a is now the most recently used
    outputs.put(("d",), torch.zeros(10))
    assert outputs.get(("b",)) is None and outputs.get(("a",)) is not None and outputs.bytes == 120
    outputs.put(("huge",), torch.zeros(100))  # larger than the whole budget: not kept
    assert outputs.get(("huge",)) is None and outputs.bytes == 120


def test_embeddings_given_in_are_not_keyed(tiny_family: Callable[[str], Path]) -> None:
    pipe = DiffusionPipeline.from_pretrained(tiny_family("flux"), local_files_only=True)
    cache_text_outputs(pipe)
    encoder = pipe.text_encoder_2
    with torch.inference_mode():
        encoder(inputs_embeds=torch.randn(1, 4, encoder.config.d_model))
        encoder(inputs_embeds=torch.randn(1, 4, encoder.config.d_model))
    assert text_output_hits(pipe) == 0
