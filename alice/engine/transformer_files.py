"""Transformer-only files: a fine-tune's `.safetensors` or a quantized `.gguf` holding the
denoiser alone, as most FLUX-era models are shared. A stored model keeps such a file as given in
its `transformer/` folder (beside the config.json it loads with); the other parts of the pipeline
are a diffusers folder's. This module reads what such a file is, and loads it for `load_pipeline`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alice.engine.families import transformer_family
from alice.engine.pipeline_configs import read_config
from alice.engine.single_file import _read_header

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch

logger = logging.getLogger("alice.engine")

TRANSFORMER = "transformer"  # the pipeline component (and folder) these files stand in for
SUFFIXES = (".gguf", ".safetensors")
# diffusers' own weight files (sharded ones start alike): a folder holding them is no single file.
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
# bitsandbytes' 4-bit state beside each packed weight, as saved in a state dict.
_BNB_STATE = (".absmax", ".quant_map", ".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")
# Tensors only a whole checkpoint has (its VAE, its text encoders, an SD UNet): such a file is
# not a transformer alone. Names as in single-file checkpoints of every family.
_WHOLE_CHECKPOINT = ("first_stage_model.", "vae.", "cond_stage_model.", "conditioner.", "text_encoders.",
                     "model.diffusion_model.input_blocks.")


@dataclass(frozen=True)
class TransformerFile:
    """What a transformer-only file holds, read from its header (no weights are read)."""

    path: Path
    family: str  # as alice/engine/families.py names it
    tensors: int
    quant_types: tuple[str, ...] = ()  # a GGUF's quantization types (F32 and F16 included); empty otherwise

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix.lower() == ".gguf"


def read_transformer_file(path: Path) -> TransformerFile:
    """The family and (for a GGUF) quantization types of a transformer-only file.

    ValueError, saying what it is instead, for a file that cannot be read (truncated, corrupt,
    another format), a GGUF of a quantization diffusers cannot compute with, a whole checkpoint
    or a LoRA, or tensors of no family ALICE knows.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path.name} is neither a .safetensors nor a .gguf file")
    if path.suffix.lower() == ".gguf":
        names, quant_types = _read_gguf(path)
    else:
        names, quant_types = list(_read_header(path).shapes), ()  # ValueError when unreadable
    check_not_bnb_single_file(path, names)
    if any(name.startswith(_WHOLE_CHECKPOINT) for name in names):
        raise ValueError(
            f"{path.name} is a whole checkpoint (it has its own VAE or text encoder weights), not a "
            "transformer alone: import it without --base"
        )
    if any("lora" in name.lower() for name in names):
        raise ValueError(f"{path.name} is a LoRA, not a transformer: import it with --lora")
    refuse_scaled_fp8(path, names)
    family = transformer_family(names)
    if family is None:
        raise ValueError(
            f"{path.name} holds no transformer of a model family ALICE knows ({len(names)} tensors, "
            f"such as {', '.join(sorted(names)[:3]) or 'none'})"
        )
    return TransformerFile(path, family, len(names), quant_types)


# ComfyUI's "scaled fp8" files store each weight in float8 beside a `.scale_weight` it is to be
# multiplied by; diffusers' converters drop the scales, which would load wrong weights silently.
_SCALED_FP8 = ("scaled_fp8", ".scale_weight", ".scale_input")


def refuse_scaled_fp8(path: Path, names: list[str]) -> None:
    """ValueError for a file in ComfyUI's scaled-fp8 format, which diffusers does not read."""
    if any(name.endswith(_SCALED_FP8) for name in names):
        raise ValueError(f"{path.name} is in ComfyUI's scaled-fp8 format (weights with `.scale_weight` "
                         "factors), which diffusers cannot load: use the model's bf16, fp16 or plain fp8 file")


def check_not_bnb_single_file(path: Path, names: list[str] | None = None) -> None:
    """ValueError, saying what loads instead, for a .safetensors of bitsandbytes 4-bit weights (as
    Forge's flux1-dev-bnb-nf4, a whole checkpoint): diffusers 0.42.1's single-file converters know
    no packed weights nor their state."""
    if names is None:
        try:
            names = list(_read_header(Path(path)).shapes)
        except ValueError:
            return  # unreadable: the caller's own checks say so
    if any(name.endswith(_BNB_STATE) for name in names):
        raise ValueError(
            f"{Path(path).name} holds bitsandbytes NF4/FP4 weights in one file (as Forge's flux1-dev-bnb-nf4): "
            "diffusers 0.42.1 converts no single file of packed 4-bit weights. Import a GGUF of it, the 16-bit "
            "file (with ALICE_QUANTIZE=nf4 it is quantized as it loads), or a transformer folder saved by "
            "diffusers with a BitsAndBytesConfig (config.json with quantization_config) with --base"
        )


def _read_gguf(path: Path) -> tuple[list[str], tuple[str, ...]]:
    """A GGUF's tensor names and quantization types; ValueError when it cannot be read or
    holds types diffusers has no dequantization for (most of the IQ types)."""
    import gguf
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    try:
        # The reader maps the file and checks every tensor lies inside it: a truncated
        # download fails here, not half-way through a load.
        reader = gguf.GGUFReader(str(path))
        tensors = [(tensor.name, tensor.tensor_type) for tensor in reader.tensors]
    except Exception as exc:  # the reader raises ValueError, KeyError, numpy's errors, ...
        raise ValueError(f"{path.name} is not a readable GGUF file (truncated or corrupt?): "
                         f"{type(exc).__name__}: {exc}") from None
    usable = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, *SUPPORTED_GGUF_QUANT_TYPES}
    unsupported = sorted({kind.name for _, kind in tensors if kind not in usable})
    if unsupported:
        supported = ", ".join(sorted(kind.name for kind in usable))
        raise ValueError(
            f"{path.name} is quantized as {', '.join(unsupported)}, which diffusers cannot compute with; "
            f"use a file quantized as one of {supported}"
        )
    return [name for name, _ in tensors], tuple(sorted({kind.name for _, kind in tensors}))


def is_nf4_folder(folder: Path) -> bool:
    """Whether a model's config.json says its weights are stored as bitsandbytes NF4 (diffusers'
    or transformers' `save_pretrained` of a model loaded with a 4-bit BitsAndBytesConfig)."""
    quantization = read_config(Path(folder) / "config.json").get("quantization_config") or {}
    return quantization.get("quant_method") == "bitsandbytes" and bool(quantization.get("load_in_4bit")) \
        and quantization.get("bnb_4bit_quant_type", "fp4") == "nf4"


def is_transformer_file(path: Path) -> bool:
    """Whether a file is (meant as) a transformer alone: any `.gguf`, or a `.safetensors` whose
    tensors are a known transformer's and nothing more. Never raises for a readable file."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return True
    try:
        read_transformer_file(path)
    except ValueError:
        return False
    return True


def transformer_file_in(folder: Path) -> Path | None:
    """The transformer-only file a model folder's `transformer/` holds in place of diffusers'
    weights, or None for a diffusers-laid-out (or absent) transformer."""
    found = [p for p in (Path(folder) / TRANSFORMER).glob("*") if p.suffix.lower() in SUFFIXES]
    if len(found) != 1 or found[0].name.startswith(_DIFFUSERS_WEIGHTS):
        return None
    return found[0]


def load_transformer_file(file: Path, folder: Path, dtype: torch.dtype, *, disable_mmap: bool = False) -> Any:
    """Load a transformer-only file offline with the config in `folder`/transformer (its class
    from that config's `_class_name`), BFL/ComfyUI names converted by diffusers. A GGUF stays
    quantized in memory and computes in `dtype`: diffusers' own default would be float32."""
    import diffusers

    config = read_config(Path(folder) / TRANSFORMER / "config.json")
    model_class = getattr(diffusers, str(config.get("_class_name", "")), None)
    if model_class is None or not hasattr(model_class, "from_single_file"):
        raise ValueError(f"{folder}/{TRANSFORMER}/config.json names no diffusers transformer that loads single files")
    options: dict[str, Any] = {}
    if file.suffix.lower() == ".gguf":
        options["quantization_config"] = diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
    else:
        options["disable_mmap"] = disable_mmap
    # `config=` turns off diffusers' default subfolder: name it, or it reads the index as the config.
    model = model_class.from_single_file(
        str(file), config=str(folder), subfolder=TRANSFORMER, dtype=dtype, local_files_only=True, **options
    )
    logger.info("loaded %s from %s (computing in %s)", model_class.__name__, file.name, dtype)
    return model


def check_transformer_file(file: Path, folder: Path) -> None:
    """Whether an unquantized transformer-only file would load with the config in
    `folder`/transformer, checked without loading it (a FLUX.1 fine-tune is 24 GB in bf16): the
    model built on the meta device from the config, the file's tensors read from its header
    (a truncated file is found there), BFL/ComfyUI names converted by diffusers' own converter
    run on meta tensors, and the names and shapes compared as a load would.
    FolderDoesNotLoad (a ValueError) saying what does not fit."""
    import diffusers
    import torch
    from diffusers.loaders.single_file_model import (
        SINGLE_FILE_LOADABLE_CLASSES,
        _get_single_file_loadable_mapping_class,
    )

    from alice.engine.folder_check import (
        FolderDoesNotLoad,
        _compare,
        _on_meta,
        _tensors_in,
    )

    part = Path(folder) / TRANSFORMER
    model_class = getattr(diffusers, str(read_config(part / "config.json").get("_class_name", "")), None)
    mapping = _get_single_file_loadable_mapping_class(model_class) if isinstance(model_class, type) else None
    if mapping is None:
        raise FolderDoesNotLoad(f"{part}/config.json names no diffusers transformer that loads single files")
    model = _on_meta(model_class, "diffusers", part, TRANSFORMER)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    found = _tensors_in([Path(file)], TRANSFORMER)
    if not found.keys() & expected.keys():  # not diffusers' names: converted as from_single_file would
        checkpoint = {key: torch.empty(shape, device="meta") for key, shape in found.items()}
        try:
            converted = SINGLE_FILE_LOADABLE_CLASSES[mapping]["checkpoint_mapping_fn"](
                config=dict(model.config), checkpoint=checkpoint)
        except Exception as exc:  # the converters raise KeyError, RuntimeError (split sizes), ...
            raise FolderDoesNotLoad(f"{TRANSFORMER}: diffusers cannot convert its tensors' names and shapes "
                                    f"({type(exc).__name__}: {exc})") from None
        found = {key: tuple(tensor.shape) for key, tensor in converted.items()}
    _compare(TRANSFORMER, expected, found)


def transformer_from_file(
    folder: Path, dtype: torch.dtype, disable_mmap: bool = False, *, quantize: str | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a model folder: its transformer, loaded, when
    `transformer/` holds a transformer-only file or the preset quantizes it at load (`quantize`
    "nf4", loaded onto `device`); none otherwise (diffusers loads the folder)."""
    file = transformer_file_in(folder)
    if quantize == "nf4" and not is_nf4_folder(Path(folder) / TRANSFORMER):  # stored NF4: loaded as it is
        return {TRANSFORMER: load_nf4_transformer(folder, file, dtype, device)}
    if file is None:
        return {}
    return {TRANSFORMER: load_transformer_file(file, folder, dtype, disable_mmap=disable_mmap)}


def nf4_config(dtype: torch.dtype) -> Any:
    """diffusers' BitsAndBytesConfig for NF4 computing in `dtype`: bitsandbytes' defaults
    otherwise (blocks of 64, no double quantization: presets' NF4_BYTES_PER_PARAM)."""
    import diffusers

    return diffusers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def load_nf4_transformer(folder: Path, file: Path | None, dtype: torch.dtype, device: str) -> Any:
    """A 16-bit transformer (diffusers' folder, or a transformer-only .safetensors) quantized to
    NF4 as it loads, onto `device` (bitsandbytes quantizes each weight as it is placed: the 16-bit
    whole is never held). diffusers' quantizer refuses without a GPU; the presets never ask it there."""
    import diffusers

    config = read_config(Path(folder) / TRANSFORMER / "config.json")
    model_class = getattr(diffusers, str(config.get("_class_name", "")), None)
    if model_class is None:
        raise ValueError(f"{folder}/{TRANSFORMER}/config.json names no diffusers transformer")
    options: dict[str, Any] = {"quantization_config": nf4_config(dtype), "device_map": {"": device}}
    if file is None:
        model = model_class.from_pretrained(
            str(folder), subfolder=TRANSFORMER, dtype=dtype, local_files_only=True, **options)
    elif file.suffix.lower() == ".gguf":
        raise ValueError(f"{file.name} is quantized already (GGUF): it is not quantized again at load")
    else:
        model = model_class.from_single_file(
            str(file), config=str(folder), subfolder=TRANSFORMER, dtype=dtype, local_files_only=True, **options)
    logger.info("loaded %s quantized to NF4 at load on %s (computing in %s)", model_class.__name__, device, dtype)
    return model
