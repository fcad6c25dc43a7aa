"""The `<lora:name:scale>` tags SD users write into prompts (AUTOMATIC1111's syntax): the engine's
words, torch-free, so the protocol checks a prompt's tags with the same parser that takes them
out before the text encoder sees the prompt."""

from __future__ import annotations

import re

# AUTOMATIC1111's syntax: <lora:name> or <lora:name:0.8>
PROMPT_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*)?>", re.IGNORECASE)
DEFAULT_LORA_SCALE = 1.0


def extract_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its LoRA tags, and the (name, scale) pairs they asked for."""
    found = [
        (m.group(1).strip(), float(m.group(2)) if m.group(2) else DEFAULT_LORA_SCALE)
        for m in PROMPT_LORA_TAG.finditer(prompt)
    ]
    cleaned = re.sub(r"\s{2,}", " ", PROMPT_LORA_TAG.sub("", prompt)).strip(" ,")
    return cleaned, found
