"""LoRA adapters for one run: `<lora:name:scale>` in prompts, loaded before, unloaded after."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from diffusers import DiffusionPipeline

# AUTOMATIC1111's syntax: <lora:name> or <lora:name:0.8>
PROMPT_TAG = re.compile(r"<lora:([^:<>]+)(?::\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*)?>", re.IGNORECASE)
DEFAULT_SCALE = 1.0


def extract_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its LoRA tags, and the (name, scale) pairs they asked for."""
    found = [(m.group(1).strip(), float(m.group(2)) if m.group(2) else DEFAULT_SCALE) for m in PROMPT_TAG.finditer(prompt)]
    cleaned = re.sub(r"\s{2,}", " ", PROMPT_TAG.sub("", prompt)).strip(" ,")
    return cleaned, found


@contextlib.contextmanager
def loras_applied(
    pipe: DiffusionPipeline,
    loras: Sequence[tuple[str, Path, float]],
    *,
    should_stop: Callable[[], str | None] | None = None,
) -> Iterator[None]:
    """Load each (name, file, scale) as an adapter for the duration, then unload them all,
    so the next request runs on the clean model.

    `should_stop` is asked before each adapter loads (each can take seconds): a reason raises
    GenerationStopped, so a cancelled run does not sit through the rest of the loading.
    """
    if not loras:
        yield
        return
    names = []
    try:
        for index, (name, path, _) in enumerate(loras):
            if should_stop and (reason := should_stop()):
                from alice.engine.generate import GenerationStopped  # generate imports this module

                raise GenerationStopped(reason)
            adapter = f"alice_{index}_{re.sub(r'[^a-zA-Z0-9_]', '_', name)}"
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
            names.append(adapter)
        pipe.set_adapters(names, adapter_weights=[scale for _, _, scale in loras])
        yield
    finally:
        pipe.unload_lora_weights()
