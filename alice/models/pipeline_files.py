"""Importing a transformer family's all-in-one single file (a FLUX.1 checkpoint from CivitAI with
CLIP, T5 and VAE inside; an SD3.5 file with its text encoders) as a diffusers folder.

The file is converted offline (alice/engine/pipeline_files.py) with the configs shipped in
alice/configs/ (SD 3.5 Medium, FLUX.1), or a stored model's of the family given as `--base`.
The parts the file lacks (FLUX files often come without T5) are that base's files, hard-linked
as a transformer-only file's are; so are text encoders the file holds only in float8 when a
base is given (its full-precision copy is better than an upcast fp8 one, and costs no disk).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from alice.engine.families import family_named
from alice.engine.folder_check import FolderDoesNotLoad, check_folder_loads
from alice.engine.pipeline_files import SHIPPED_CONFIGS, PipelineFile, convert_pipeline_file
from alice.models.store import PIPELINE, StoredModel, store_folder, validate_model_name
from alice.models.transformer_imports import _files_of, check_base_for

logger = logging.getLogger("alice.models")


def import_pipeline_file(file: PipelineFile, name: str, *, base: str | None, source: str = "local") -> StoredModel:
    """Convert and store an all-in-one file; ValueError, naming what is missing and the command
    that supplies it, when it lacks parts (or the family ships no configs) and no `--base` is
    given, and for a file that does not convert or whose folder would not load."""
    validate_model_name(name)
    family = family_named(file.family)
    shipped = SHIPPED_CONFIGS.get(family.name)
    base_model = None
    if base is not None or file.lacking or shipped is None:
        lacks = file.describe(file.lacking) if file.lacking else f"configs (ALICE ships none for {family.name})"
        base_model = check_base_for(
            family.name, base, file.path.name, lacks=lacks,
            how="`alice models import {file} --name N --base <a stored {kind} model>`")
    leave_out = file.lacking + (file.fp8 if base_model is not None else ())
    if file.fp8 and base_model is None:
        logger.info("%s holds %s in float8: stored in bfloat16 (give --base to take them from a stored model)",
                    file.path.name, file.describe(file.fp8))
    config_dir = base_model.path if base_model is not None else shipped
    with tempfile.TemporaryDirectory(prefix="alice-convert-") as scratch:
        staging = Path(scratch)
        try:
            convert_pipeline_file(file, staging, config_dir, leave_out=leave_out)
        except Exception as exc:  # shapes that do not fit the configs, truncated tensors, ...
            configs = f"{base}'s configs" if base_model is not None else (
                f"the shipped {family.name} configs ({shipped.name}; a model of another size converts with "
                f"--base <a stored model of its size>)")
            raise ValueError(f"{file.path.name} does not convert as a {family.name} checkpoint with {configs}: "
                             f"{type(exc).__name__}: {exc}") from exc
        try:  # the base's parts were checked when it was imported
            check_folder_loads(staging, skip=leave_out)
        except FolderDoesNotLoad as exc:
            raise ValueError(f"{file.path.name} does not load as a {family.name} pipeline: {exc}") from None
        linked = {}
        if base_model is not None:
            linked = {relative: base_model.path / relative for relative in _files_of(base_model.path)
                      if relative.split("/")[0] in leave_out}
        stored = store_folder(staging, name, kind=PIPELINE, family=family.name, source=source, linked=linked)
    logger.info("imported %s (%s) as %s%s", file.path.name, family.name, stored.tag,
                f", with {', '.join(leave_out)} from {base}" if leave_out else "")
    return stored
