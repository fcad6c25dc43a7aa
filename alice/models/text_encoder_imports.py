"""Importing a quantized T5 text encoder onto a stored model, in place of its 16-bit T5.

`alice models import t5-v1_1-xxl-encoder-Q8_0.gguf --name flux-t5q8 --base flux-dev`: the same
command as a transformer file onto a base, told apart by the file (a GGUF whose architecture is
llama.cpp's `t5encoder`). The new model is the base with that one part replaced: the GGUF sits in
the T5 component's folder beside the base's config.json; every other file (a GGUF transformer
too, when the base is one) is a hard link to the base's. A GGUF saves disk, not memory:
transformers dequantizes it as it loads (alice/engine/text_encoder_files.py).
"""

from __future__ import annotations

import gc
import logging
import tempfile
from pathlib import Path

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
    if base is None:
        raise ValueError(
            f"{path.name} holds a T5 text encoder alone: import it onto the stored model whose T5 it replaces: "
            f"`alice models import {path.name} --name N --base <a stored SD3, FLUX.1 or Chroma model>`"
        )
    base_model = _base_model(base)
    components = t5_components(base_model.path)
    if not components:
        raise ValueError(f"--base {base} is a {base_model.family} model, which has no T5 text encoder")
    component = components[0]
    with tempfile.TemporaryDirectory(prefix="alice-t5-") as scratch:
        staging = Path(scratch)
        (staging / component).mkdir()
        _link_or_copy(str(path), str(staging / component / path.name))
        _link_or_copy(str(base_model.path / component / "config.json"), str(staging / component / "config.json"))
        _check_loads(staging / component, path, base)
        linked = {
            relative: base_model.path / relative
            for relative in _files_of(base_model.path) if not relative.startswith(f"{component}/")
        }
        stored = store_folder(staging, name, kind=PIPELINE, family=base_model.family, source=source, linked=linked)
    logger.info("imported %s as %s's T5 (%s) onto %s's other parts as %s", path.name, component,
                base_model.family, base, stored.tag)
    return stored


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
