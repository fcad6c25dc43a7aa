"""Diffusers pipeline folders with random weights in the architectures of alice/configs/<name>
(sd15, sdxl, flux1-schnell, sd35-medium, ...), for bench.gpu: no download, the real models' sizes.

The folder is the architecture folder (model_index.json, configs, scheduler, tokenizers) with each
model's weights added: built in the dtype it is saved in (FLUX.1's 12 B transformer is 24 GB in
bf16, 48 GB in float32) and saved before the next one is built, so no more than one model is ever
in memory. Each model is built on the card only when the card's free memory holds it twice over
(random init is much faster there), else on the CPU: SDXL's UNet is 5.1 GB in fp16, and a 6 GB
GTX 1060 runs out of memory building it (counted first on the meta device, which costs nothing).
`tiny=True` shrinks every model to a few layers of width 32 (TINY_SIZES, TINY_PARTS), keeping the
classes, the tokenizers and the layout: the whole benchmark then runs on the CPU in seconds (the
tests do this).
"""

from __future__ import annotations

import gc
import importlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "alice" / "configs"

# Per model class, the config values `tiny=True` overrides. Widths fit each other as in the real
# models: FLUX's joint attention takes T5's width and its pooled vector CLIP's; SD3's joint width
# (T5's) holds both CLIPs' widths side by side, and its pooled vector both projections.
_TINY_CLIP = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "projection_dim": 32}
TINY_SIZES: dict[str, dict[str, Any]] = {
    "FluxTransformer2DModel": {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                               "num_attention_heads": 2, "axes_dims_rope": [4, 6, 6], "joint_attention_dim": 64,
                               "pooled_projection_dim": 32},
    "SD3Transformer2DModel": {"num_layers": 1, "dual_attention_layers": [0], "attention_head_dim": 16,
                              "num_attention_heads": 2, "caption_projection_dim": 32, "joint_attention_dim": 64,
                              "pooled_projection_dim": 64, "pos_embed_max_size": 16, "sample_size": 8},
    "AutoencoderKL": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
                      "sample_size": 64},
    "CLIPTextModel": _TINY_CLIP,
    "CLIPTextModelWithProjection": _TINY_CLIP,
    "T5EncoderModel": {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2,
                       "num_heads": 4, "relative_attention_num_buckets": 8},
}
# Per architecture and part, where the sizes depend on the other parts: SDXL's UNet attends to both
# CLIPs' hidden states side by side (32 + 32) and its added embedding takes six time embeddings
# and the second CLIP's projection (6 x 8 + 32).
TINY_PARTS: dict[str, dict[str, dict[str, Any]]] = {
    "sdxl": {"unet": {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 2, 2],
                      "transformer_layers_per_block": [1, 1, 1], "layers_per_block": 1, "norm_num_groups": 8,
                      "cross_attention_dim": 64, "addition_time_embed_dim": 8,
                      "projection_class_embeddings_input_dim": 80, "sample_size": 8}},
}


def model_components(name: str) -> dict[str, tuple[str, str]]:
    """The architecture's models (not tokenizers or scheduler): component -> (library, class)."""
    index = json.loads((CONFIGS / name / "model_index.json").read_text(encoding="utf-8"))
    return {
        part: (spec[0], spec[1]) for part, spec in index.items()
        if not part.startswith("_") and isinstance(spec, list) and spec[1] is not None
        and not part.startswith("tokenizer") and part != "scheduler"
    }


def random_pipeline_folder(name: str, folder: Path, device: str, dtype: torch.dtype, tiny: bool = False) -> Path:
    """`folder`: alice/configs/<name> with random weights for every model, saved in `dtype`."""
    source = CONFIGS / name
    components = model_components(name)
    tiny_parts = TINY_PARTS.get(name, {}) if tiny else {}
    if tiny:
        missing = sorted({cls for part, (_, cls) in components.items() if part not in tiny_parts} - set(TINY_SIZES))
        if missing:
            raise ValueError(f"{name}: no tiny sizes for {', '.join(missing)}")
    shutil.copytree(source, folder)
    torch.manual_seed(0)
    for part, (library, class_name) in components.items():
        started = time.perf_counter()
        cls = getattr(importlib.import_module(library), class_name)
        overrides = tiny_parts.get(part, TINY_SIZES.get(class_name, {})) if tiny else {}
        with torch.device("meta"):
            size = sum(p.numel() for p in build(cls, library, source / part, overrides).parameters())
        where = build_device(device, size * dtype.itemsize)
        with torch.device(where), default_dtype(dtype):
            model = build(cls, library, source / part, overrides)
        model.save_pretrained(str(folder / part), safe_serialization=True)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"  {name}/{part}: {size / 1e9:.3f} B parameters built on {where} and saved in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return folder


def build(cls: Any, library: str, config_folder: Path, overrides: dict[str, Any]) -> torch.nn.Module:
    """A model of `cls` with random weights from the config in `config_folder`, on the current
    default device and dtype."""
    if library == "diffusers":
        return cls.from_config({**cls.load_config(str(config_folder)), **overrides})
    from transformers import AutoConfig

    return cls(AutoConfig.from_pretrained(str(config_folder), **overrides))


def build_device(device: str, nbytes: int) -> str:
    """The card when its free memory holds `nbytes` twice over (init's temporaries, a margin for
    what the driver does not count), else the CPU."""
    if not device.startswith("cuda"):
        return "cpu"
    free, _ = torch.cuda.mem_get_info(device)
    return device if free >= 2 * nbytes else "cpu"


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
