"""Text encoders' outputs kept per input, for the transformer families.

A FLUX.1, SD3 or Chroma prompt goes through T5-XXL (4.7 B parameters; under offload also its
transfer onto the card) before the first step. The same prompt comes back often: a re-roll with
another seed, the next image of a request, SAM asking again, a batch of clients sharing one
prompt, the empty negative prompt of every SD3 call. Each text encoder's forward is wrapped to
hand back its output for token ids it has seen, within a byte budget per encoder (least recently
used dropped first); outputs too large for it (all hidden states of a Qwen encoder) are not kept.

The outputs depend on the weights too: a LoRA that reaches a text encoder changes them, so
`forget_text_outputs` is called whenever LoRAs are loaded or unloaded (alice/engine/loras.py).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch
    from diffusers import DiffusionPipeline

logger = logging.getLogger("alice.engine")

BUDGET_BYTES = 64 * 1024**2  # per encoder: sixteen T5 prompts at 512 tokens in 16 bits, next to the model's GBs
_CACHE = "_alice_text_outputs"


class _Outputs:
    """One encoder's outputs by input, least recently used first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0

    def get(self, key: tuple) -> Any | None:
        found = self.entries.get(key)
        if found is None:
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return found[0]

    def put(self, key: tuple, output: Any) -> None:
        size = _tensor_bytes(output)
        if size > self.budget:
            return
        self.entries[key] = (output, size)
        self.bytes += size
        while self.bytes > self.budget:
            _, (_, dropped) = self.entries.popitem(last=False)
            self.bytes -= dropped

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0


def cache_text_outputs(pipe: DiffusionPipeline, budget: int = BUDGET_BYTES) -> None:
    """Wrap each text encoder of the pipeline (once) so that an input seen before is answered
    from memory."""
    import torch

    for name, module in pipe.components.items():
        if not name.startswith("text_encoder") or not isinstance(module, torch.nn.Module):
            continue
        if getattr(module, _CACHE, None) is not None:
            continue
        outputs = _Outputs(budget)
        setattr(module, _CACHE, outputs)
        module.forward = _remembering(module.forward, outputs)  # outermost, over any offload hook


def forget_text_outputs(pipe: DiffusionPipeline) -> None:
    """Drop every kept output (the text encoders' weights are about to change, or have)."""
    for module in pipe.components.values():
        outputs = getattr(module, _CACHE, None)
        if outputs is not None:
            outputs.clear()


def text_output_hits(pipe: DiffusionPipeline) -> int:
    """How many encoder passes the kept outputs saved so far (for tests and logs)."""
    return sum(getattr(module, _CACHE).hits for module in pipe.components.values() if hasattr(module, _CACHE))


def _remembering(forward: Callable[..., Any], outputs: _Outputs) -> Callable[..., Any]:
    def remembered(*args: Any, **kwargs: Any) -> Any:
        key = _key(args, kwargs)
        if key is None:
            return forward(*args, **kwargs)
        found = outputs.get(key)
        if found is not None:
            return found
        output = forward(*args, **kwargs)
        outputs.put(key, output)
        return output

    return remembered


def _key(args: tuple, kwargs: dict) -> tuple | None:
    """The call's inputs as a key: tensors by shape, dtype and values (token ids and masks are
    small), plain values as they are; None (not kept) for anything else."""
    import torch

    parts: list[Any] = []
    for name, value in [*enumerate(args), *sorted(kwargs.items())]:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() or value.numel() > 65536:  # embeddings given in: not token ids
                return None
            parts.append((name, tuple(value.shape), str(value.dtype), value.cpu().numpy().tobytes()))
        elif value is None or isinstance(value, (bool, int, float, str)):
            parts.append((name, value))
        else:
            return None
    return tuple(parts)


def _tensor_bytes(output: Any) -> int:
    import torch

    if isinstance(output, torch.Tensor):
        return output.numel() * output.element_size()
    if isinstance(output, dict):  # transformers' ModelOutput is an ordered dict
        return sum(_tensor_bytes(value) for value in output.values())
    if isinstance(output, (tuple, list)):
        return sum(_tensor_bytes(value) for value in output)
    return 0
