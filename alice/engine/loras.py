"""LoRA adapters for one run (the UNet families' pipelines and the transformer families' alike):
`<lora:name:scale>` in prompts or `loras` in settings, loaded before, unloaded after."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alice.engine.text_cache import forget_text_outputs

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch
    from diffusers import DiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

class NoLayerTookIt(ValueError):
    """Diffusers loaded a LoRA file into no layer of the model: its tensor names are of another
    model's layers. Diffusers only warns ("No LoRA keys associated to ..."), in both directions
    between the SD and FLUX.1 pipelines, and the adapter would then be missing at set_adapters."""


class LoraLoadFailed(Exception):
    """A stored LoRA that does not load into the pipeline it was asked for with (its cause chained)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"LoRA '{name}' does not load")
        self.name = name


@contextlib.contextmanager
def loras_applied(
    pipe: DiffusionPipeline,
    loras: Sequence[tuple[str, Path, float]],
    *,
    fuse: bool = False,
    should_stop: Callable[[], str | None] | None = None,
) -> Iterator[None]:
    """Load each (name, file, scale) as an adapter for the duration, then unload them all,
    so the next request runs on the clean model, bit for bit, whatever failed half-way.

    With `fuse` (for a compiled UNet), the adapters are added into the weights of the layers
    they touch and their layers removed again before the run: the module tree stays the one
    torch.compile traced, so no LoRA, scale or mix of them recompiles it. Adapter layers left
    in recompile at every change (bench.lora_recompiles on the demo model: 5 graphs over five
    LoRA changes with layers, 1 fused). Diffusers' hotswap (enable_lora_hotswap) would need
    an adapter loaded at compile time that covers every layer any LoRA may touch, at the
    highest rank, running in every plain request too. The touched weights are copied first and
    copied back afterwards; subtracting the LoRA again (unfuse_lora) would leave rounding in
    the model.

    `should_stop` is asked before each adapter loads (each can take seconds): a reason raises
    GenerationStopped, so a cancelled run does not sit through the rest of the loading.
    """
    if not loras:
        yield
        return
    import torch

    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    forget_text_outputs(pipe)  # a LoRA may reach the text encoders: their kept outputs no longer hold
    try:
        names = []
        for index, (name, path, _) in enumerate(loras):
            if should_stop and (reason := should_stop()):
                from alice.engine.generate import GenerationStopped  # generate imports this module

                raise GenerationStopped(reason)
            adapter = f"alice_{index}_{re.sub(r'[^a-zA-Z0-9_]', '_', name)}"
            try:
                if (renamed := _kohya_names_for_flux1(pipe, path)) is not None:
                    pipe.load_lora_weights(renamed, adapter_name=adapter)
                else:
                    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # shapes or keys of another family's model, a damaged file
                raise LoraLoadFailed(name) from exc
            if not any(adapter in loaded for loaded in pipe.get_list_adapters().values()):
                raise LoraLoadFailed(name) from NoLayerTookIt(f"no layer of the model took '{path.name}'")
            names.append(adapter)
        pipe.set_adapters(names, adapter_weights=[scale for _, _, scale in loras])
        if fuse:
            saved = _copies_of_adapted_weights(pipe)
            pipe.fuse_lora(components=_adapted_components(pipe), adapter_names=names)
            pipe.unload_lora_weights()
        yield
    finally:
        pipe.unload_lora_weights()
        with torch.no_grad():
            for tensor, original in saved:
                tensor.copy_(original)
        forget_text_outputs(pipe)  # what the LoRA's encoders gave is not the clean model's


def _kohya_names_for_flux1(pipe: DiffusionPipeline, path: Path) -> dict[str, torch.Tensor] | None:
    """A FLUX.1 LoRA in ComfyUI's names with PEFT's matrix names (`diffusion_model.double_blocks.0.
    img_attn.qkv.lora_A.weight`), renamed to kohya's (`lora_down`/`lora_up`), which diffusers'
    FLUX.1 converter takes under the same `diffusion_model.` names and fuses alike; None for any
    other file or pipeline. FluxLoraLoaderMixin sends `lora_down` files to that converter and
    leaves these untouched, so no layer would take them. No `alpha`: the converter then scales
    by 1, as PEFT's names without one mean."""
    from diffusers.loaders import FluxLoraLoaderMixin
    from safetensors import safe_open

    if not isinstance(pipe, FluxLoraLoaderMixin):
        return None
    with safe_open(str(path), framework="pt") as weights:
        keys = list(weights.keys())
        if not keys or not all(key.startswith("diffusion_model.") for key in keys) or not any(
            ".lora_A." in key for key in keys
        ) or any(".lora_down." in key for key in keys):
            return None
        return {key.replace(".lora_A.", ".lora_down.").replace(".lora_B.", ".lora_up."): weights.get_tensor(key)
                for key in keys}


def _adapted_components(pipe: DiffusionPipeline) -> list[str]:
    return [name for name in pipe._lora_loadable_modules if _tuner_layers(getattr(pipe, name, None))]


def _tuner_layers(module: object) -> list[BaseTunerLayer]:
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    if not isinstance(module, torch.nn.Module):
        return []
    return [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)]


def _copies_of_adapted_weights(pipe: DiffusionPipeline) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each weight and bias a fusing may change, with a copy of it in host memory."""
    copies = []
    for name in pipe._lora_loadable_modules:
        for layer in _tuner_layers(getattr(pipe, name, None)):
            base = layer.get_base_layer()
            for tensor in (base.weight, getattr(base, "bias", None)):
                if tensor is not None:
                    copies.append((tensor, tensor.detach().to("cpu", copy=True)))
    return copies
