"""The transformer families read a weighted prompt's plain words and say so; their T5 reads up to
the family's `max_sequence_length`, past which the request is refused."""

from __future__ import annotations

import pytest

from alice.engine.families import family_named
from alice.engine.generate import prompt_arguments
from alice.engine.prompt_reading import PromptTooLong, max_sequence_length, read_prompts
from alice.engine.spec import GenerationSpec


def test_flux_reads_plain_words_notes_the_clip_cut_and_refuses_past_t5(tiny_family):
    folder, flux = tiny_family("flux"), family_named("flux1-dev")
    assert max_sequence_length(flux) == 512 and max_sequence_length(family_named("sd3")) == 256
    assert read_prompts(folder, flux, "a red fox", "") == ()
    notes = read_prompts(folder, flux, "a (red:1.3) fox <lora:ink:0.5>", "")
    assert len(notes) == 1 and "read as the plain words" in notes[0]
    assert any("CLIP text encoder read the first 75" in n for n in read_prompts(folder, flux, "fox " * 100, ""))
    with pytest.raises(PromptTooLong, match="at most 512"):
        read_prompts(folder, flux, "fox " * 600, "")
    args = prompt_arguments(None, flux, GenerationSpec(prompt="x", seed=1), ["a (red:1.3) fox BREAK cub"], [""])
    assert args["prompt"] == "a red fox cub"
