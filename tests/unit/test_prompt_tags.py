"""The `<lora:name:scale>` prompt tags, parsed by the engine (the protocol checks them with it)."""

from __future__ import annotations

from alice.engine.prompt_tags import DEFAULT_LORA_SCALE, extract_prompt_loras


def test_tags_come_out_of_the_prompt_with_their_scales() -> None:
    cleaned, loras = extract_prompt_loras("a boat <lora:ink:0.5> at sea, <LoRA: sky >  <lora:fog:-.25>")
    assert cleaned == "a boat at sea"
    assert loras == [("ink", 0.5), ("sky", DEFAULT_LORA_SCALE), ("fog", -0.25)]


def test_a_prompt_without_tags_is_left_as_it_is() -> None:
    assert extract_prompt_loras("a boat, at sea") == ("a boat, at sea", [])
    assert extract_prompt_loras("<lora:>  <lora:a:b>") == ("<lora:> <lora:a:b>", [])  # not tags: kept as text
