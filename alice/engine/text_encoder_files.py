"""Quantized T5 text encoders in place of a model's 16-bit one: a GGUF file (city96's
t5-v1_1-xxl-encoder-gguf, written by llama.cpp's converter) kept in the T5 component's folder
beside the base's config.json, loaded by transformers (`gguf_file=`).

transformers dequantizes a GGUF into the compute dtype as it loads: such a T5 saves disk (Q8_0
5.1 GB of 9.5), not memory; the planner counts it at its 16-bit size (alice/engine/model_sizes.py
finds no .safetensors there and takes the family's T5 figure).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alice.engine.pipeline_configs import read_config

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch

logger = logging.getLogger("alice.engine")

# llama.cpp's names for a T5 encoder file (`t5encoder`) and a whole T5 (`t5`); transformers loads both.
T5_ARCHITECTURES = ("t5encoder", "t5")


def gguf_architecture(path: Path) -> str | None:
    """A GGUF file's `general.architecture` (None when it has none or is no readable GGUF)."""
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).fields.get("general.architecture")
        return bytes(field.parts[field.data[0]]).decode() if field is not None else None
    except Exception:  # the reader raises many kinds for files that are no GGUF
        return None


def is_t5_gguf(path: Path) -> bool:
    """Whether a file is a GGUF of a T5 encoder (not a transformer: those carry `flux` and the like)."""
    path = Path(path)
    return path.suffix.lower() == ".gguf" and gguf_architecture(path) in T5_ARCHITECTURES


def t5_components(folder: Path) -> list[str]:
    """The model folder's components holding a T5 encoder, by their config.json's model_type."""
    return sorted(
        part.name for part in Path(folder).glob("text_encoder*")
        if read_config(part / "config.json").get("model_type") in ("t5", "umt5")
    )


def gguf_in(component: Path) -> Path | None:
    found = sorted(Path(component).glob("*.gguf"))
    return found[0] if len(found) == 1 else None


def load_t5_gguf(component: Path, file: Path, dtype: torch.dtype) -> Any:
    """The T5 encoder of a GGUF file with the component's config.json (llama.cpp's metadata does
    not say T5 v1.1's gated GELU), dequantized into `dtype`."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config.from_pretrained(str(component), local_files_only=True)
    model = T5EncoderModel.from_pretrained(
        str(component), gguf_file=file.name, config=config, dtype=dtype, local_files_only=True)
    logger.info("loaded T5 encoder from %s, dequantized to %s", file.name, dtype)
    return model.eval()


def text_encoders_from_files(folder: Path, dtype: torch.dtype) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a model folder: each T5 component that holds a
    GGUF file, loaded; none otherwise (diffusers loads the folder, an NF4 or 8-bit T5 folder by its
    config's quantization_config)."""
    loaded = {}
    for name in t5_components(folder):
        file = gguf_in(Path(folder) / name)
        if file is not None:
            loaded[name] = load_t5_gguf(Path(folder) / name, file, dtype)
    return loaded
