"""Importing a quantized T5 text encoder onto a stored model, in place of its 16-bit T5.

`alice models import t5-v1_1-xxl-encoder-Q8_0.gguf --name flux-t5q8 --base flux-dev`: the same
command as a transformer file onto a base, told apart by the file (a GGUF whose architecture is
llama.cpp's `t5encoder`). The new model is the base with that one part replaced: the GGUF sits in
the T5 component's folder beside the base's config.json; every other file (a GGUF transformer
too, when the base is one) is a hard link to the base's. A GGUF saves disk, not memory:
transformers dequantizes it as it loads (alice/engine/text_encoder_files.py). A T5 folder saved by
transformers with a BitsAndBytesConfig (NF4 or 8-bit) imports the same way, and stays quantized.
"""

from __future__ import annotations

import gc
import logging
import tempfile
from pathlib import Path

from alice.engine.pipeline_configs import read_config
from alice.engine.text_encoder_files import is_t5_gguf, load_t5_gguf, t5_components
from alice.models.store import PIPELINE, StoredModel, _link_or_copy, store_folder, validate_model_name
from alice.models.transformer_imports import _base_model, _files_of

logger = logging.getLogger("alice.models")


def import_t5_file(path: Path, name: str, *, base: str | None, source: str = "local") -> StoredModel:
    """Store the stored model `base` with its T5 encoder replaced by the GGUF file `path`.

    ValueError, saying what to do, when no base is given, the base has no T5 (SD 1.x, Z-Image,
    FLUX.2 ...), or the file is no T5 GGUF or does not load with the base's T5 config (another
    size: a T5-base file onto T5-XXL).
    """
    validate_model_name(name)
    path = Path(path)
    if not is_t5_gguf(path):
        raise ValueError(f"{path.name} is no GGUF of a T5 encoder (its general.architecture is not t5encoder)")
    base_model, component = _t5_of(base, path.name)
    with tempfile.TemporaryDirectory(prefix="alice-t5-") as scratch:
        staging = Path(scratch)
        (staging / component).mkdir()
        _link_or_copy(str(path), str(staging / component / path.name))
        _link_or_copy(str(base_model.path / component / "config.json"), str(staging / component / "config.json"))
        _check_loads(staging / component, path, base)
        stored = store_folder(staging, name, kind=PIPELINE, family=base_model.family, source=source,
                              linked=_other_files(base_model, component))
    logger.info("imported %s as %s's T5 (%s) onto %s's other parts as %s", path.name, component,
                base_model.family, base, stored.tag)
    return stored


def import_t5_folder(folder: Path, name: str, *, base: str | None, source: str = "local") -> StoredModel:
    """Store the stored model `base` with its T5 encoder replaced by a T5 folder saved by
    transformers, as one quantized with a BitsAndBytesConfig (NF4 or 8-bit: its config.json keeps
    `quantization_config`, which transformers honours when the pipeline loads). ValueError, saying
    what to do, as for a GGUF."""
    validate_model_name(name)
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if read_config(folder / "config.json").get("model_type") not in ("t5", "umt5") or not weights:
        raise ValueError(f"{folder} is no T5 encoder folder (a config.json of model_type t5 and .safetensors weights)")
    base_model, component = _t5_of(base, folder.name)
    with tempfile.TemporaryDirectory(prefix="alice-t5-") as scratch:
        staging = Path(scratch)
        (staging / component).mkdir()
        for file in [folder / "config.json", *weights, *folder.glob("*.index.json")]:
            _link_or_copy(str(file), str(staging / component / file.name))
        _check_folder_loads(staging / component, folder, base_model.name)
        stored = store_folder(staging, name, kind=PIPELINE, family=base_model.family, source=source,
                              linked=_other_files(base_model, component))
    logger.info("imported the T5 folder %s as %s's %s onto its other parts as %s", folder, base, component, stored.tag)
    return stored


def _t5_of(base: str | None, what: str) -> tuple[StoredModel, str]:
    """The stored base and its T5 component; ValueError saying what to do when there is none."""
    if base is None:
        raise ValueError(
            f"{what} holds a T5 text encoder alone: import it onto the stored model whose T5 it replaces: "
            f"`alice models import {what} --name N --base <a stored SD3, FLUX.1 or Chroma model>`"
        )
    base_model = _base_model(base)
    components = t5_components(base_model.path)
    if not components:
        raise ValueError(f"--base {base} is a {base_model.family} model, which has no T5 text encoder")
    return base_model, components[0]


def _other_files(base: StoredModel, component: str) -> dict[str, Path]:
    return {relative: base.path / relative for relative in _files_of(base.path)
            if not relative.startswith(f"{component}/")}


def _check_folder_loads(component: Path, folder: Path, base: str) -> None:
    """Load it as the engine will (transformers quantizes and runs bitsandbytes on the CPU too)."""
    from transformers import T5EncoderModel

    try:
        model = T5EncoderModel.from_pretrained(str(component), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for folders that do not load
        raise ValueError(f"{folder} does not load as {base}'s T5 encoder: {type(exc).__name__}: {exc}") from exc
    del model
    gc.collect()


def _check_loads(component: Path, path: Path, base: str) -> None:
    """Load it as the engine will (in bf16, half of float32's memory), so a file of another
    size fails the import rather than the first request."""
    import torch

    try:
        model = load_t5_gguf(component, component / path.name, torch.bfloat16)
    except Exception as exc:  # transformers raises many kinds for files that do not fit
        raise ValueError(
            f"{path.name} does not load as {base}'s T5 encoder (a T5 of another size, or a quantization "
            f"transformers cannot read): {type(exc).__name__}: {exc}"
        ) from exc
    del model
    gc.collect()
