"""Importing a transformer-only file onto a stored model's other parts, and storing those parts alone.

Most FLUX-era models are shared as the transformer alone (a fine-tune's `.safetensors`, a
quantized `.gguf`): the text encoders, tokenizers, VAE and scheduler come from a stored model
of the same family, the "base". The new model is a diffusers folder whose `transformer/` holds
the file as given with the base's transformer config, and whose other files are hard links to
the base's (the store keeps one copy of a 10 GB text encoder, however many fine-tunes use it).
The engine loads such a folder's transformer from the file (alice/engine/transformer_files.py).
"""

from __future__ import annotations

import gc
import json
import logging
import tempfile
from pathlib import Path

from alice.engine.families import FAMILIES, detect_family, family_named, transformer_family
from alice.engine.folder_check import FolderDoesNotLoad, check_folder_loads
from alice.engine.pipeline_configs import read_config
from alice.engine.pipeline_files import FLUX1_SCHEDULERS, SHIPPED_CONFIGS
from alice.engine.single_file import _read_header
from alice.engine.transformer_files import (
    SUFFIXES,
    TRANSFORMER,
    TransformerFile,
    check_transformer_file,
    load_transformer_file,
    read_transformer_file,
)
from alice.models.store import (
    BASE,
    PIPELINE,
    ModelNotFound,
    StoredModel,
    _link_or_copy,
    get_model,
    list_models,
    store_folder,
    validate_model_name,
)

logger = logging.getLogger("alice.models")

_BENTOML_FILES = ("model.yaml",)  # bentoml's own, in every stored version's folder


def import_transformer_file(path: Path, name: str, *, base: str | None, source: str = "local") -> StoredModel:
    """Store a transformer-only file as a model whose other parts are the stored model `base`'s.

    ValueError, saying what to do, when `base` is not given (naming the stored models that
    would do), is no stored pipeline or base, or is of another family than the file; and for
    a file that is no transformer, cannot be read, or does not load with the base's config.
    """
    validate_model_name(name)
    path = Path(path)
    file = read_transformer_file(path)
    family = family_named(file.family)
    base_model = check_base_for(family.name, base, path.name)
    config = read_config(base_model.path / TRANSFORMER / "config.json") or _shipped_config(family.name)
    if not config:
        raise ValueError(f"{base} has no transformer/config.json, which the file's architecture is read from")
    if family.guidance_embeds is not None:  # the file decides: FLUX.1 dev has a guidance embedder
        config["guidance_embeds"] = family.guidance_embeds
    with tempfile.TemporaryDirectory(prefix="alice-transformer-") as scratch:
        staging = Path(scratch)
        staged, written = _write_own_files(staging, path, config, base_model, family.name)
        _check_loads(file, staged, staging, base)
        linked = {
            relative: base_model.path / relative
            for relative in _files_of(base_model.path)
            if relative not in written and not relative.startswith(f"{TRANSFORMER}/")
        }
        stored = store_folder(staging, name, kind=PIPELINE, family=family.name, source=source, linked=linked)
    logger.info("imported %s (%s%s) onto %s's parts as %s", path.name, family.name,
                f", {'/'.join(file.quant_types)}" if file.quant_types else "", base, stored.tag)
    return stored


def import_transformer_folder(folder: Path, name: str, *, base: str | None, source: str = "local") -> StoredModel:
    """Store a transformer folder saved by diffusers (config.json and .safetensors weights; one
    quantized to NF4 with a BitsAndBytesConfig keeps its `quantization_config`) as a model whose
    other parts are the stored model `base`'s.

    Checked without loading: the family from its tensor names, the class against the base's
    (diffusers loads an NF4 folder on a CUDA card only; the planner refuses it elsewhere before
    loading). ValueError, saying what to do, as for a transformer file.
    """
    validate_model_name(name)
    folder = Path(folder)
    config = read_config(folder / "config.json")
    weights = sorted(folder.glob("*.safetensors"))
    if not str(config.get("_class_name", "")).endswith("Transformer2DModel") or not weights:
        raise ValueError(f"{folder} is no diffusers transformer folder (a config.json naming a transformer class "
                         "and .safetensors weights); --base takes a transformer-only file or such a folder")
    names = [key for file in weights for key in _read_header(file).shapes]  # ValueError when unreadable
    family_name = transformer_family(names)
    if family_name is None:
        raise ValueError(f"{folder} holds no transformer of a model family ALICE knows")
    family = family_named(family_name)
    base_model = check_base_for(family.name, base, folder.name)
    base_class = read_config(base_model.path / TRANSFORMER / "config.json").get("_class_name")
    if base_class and base_class != config["_class_name"]:
        raise ValueError(f"{folder} holds a {config['_class_name']}, {base}'s transformer is a {base_class}")
    with tempfile.TemporaryDirectory(prefix="alice-transformer-") as scratch:
        staging = Path(scratch)
        (staging / TRANSFORMER).mkdir()
        for file in [folder / "config.json", *weights, *folder.glob("*.index.json")]:
            _link_or_copy(str(file), str(staging / TRANSFORMER / file.name))
        linked = {relative: base_model.path / relative for relative in _files_of(base_model.path)
                  if not relative.startswith(f"{TRANSFORMER}/")}
        stored = store_folder(staging, name, kind=PIPELINE, family=family.name, source=source, linked=linked)
    quantization = config.get("quantization_config") or {}
    logger.info("imported the transformer folder %s (%s%s) onto %s's parts as %s", folder, family.name,
                f", {quantization.get('quant_method')}" if quantization else "", base, stored.tag)
    return stored


def _shipped_config(family: str) -> dict:
    folder = SHIPPED_CONFIGS.get(family)
    return read_config(folder / TRANSFORMER / "config.json") if folder else {}


def check_base_for(family_name: str, base: str | None, filename: str, *,
                   how: str = "`alice models import {file} --name N --base <a stored {kind} model>`",
                   lacks: str | None = None) -> StoredModel:
    """The stored model `base` a transformer file of this family takes its other parts from.

    ValueError, saying what to do, when no base is given (`how`, naming the stored models that
    would do; `lacks`, the parts an all-in-one file is without), or it is not stored, not a
    pipeline or base, or of a family whose text encoders and VAE do not fit. Downloads ask this
    before fetching, from the family their source names."""
    family = family_named(family_name)
    kind = _same_kind(family.name)
    if base is None:
        candidates = [m.name for m in list_models() if m.kind in (PIPELINE, BASE) and m.family in FAMILIES
                      and FAMILIES[m.family].text_to_image == family.text_to_image]
        stored = f"stored {kind} models: {', '.join(candidates)}" if candidates else f"no {kind} model is stored yet"
        what = (f"is a {family.name} checkpoint without its {lacks}, which come" if lacks
                else f"holds only a {family.name} transformer; its text encoders and VAE come")
        raise ValueError(f"{filename} {what} from a stored {kind} model: {how.format(file=filename, kind=kind)} ({stored})")
    base_model = _base_model(base)
    base_family = family_named(base_model.family)
    # FLUX.1 dev and schnell share their text encoders and VAE: a pipeline class in common says so.
    if base_family.text_to_image != family.text_to_image:
        raise ValueError(
            f"{filename} holds a {family.name} transformer, but {base} is a {base_family.name} model: "
            f"its text encoders and VAE do not fit. Use a stored {kind} model as --base"
        )
    return base_model


def _same_kind(family: str) -> str:
    """The families a transformer of this one can take its other parts from, as words."""
    pipeline = family_named(family).text_to_image
    return " or ".join(f.name for f in FAMILIES.values() if f.text_to_image == pipeline)


def _base_model(base: str) -> StoredModel:
    try:
        model = get_model(base)
    except ModelNotFound:
        raise ValueError(f"--base {base}: no such model in the store") from None
    if model.kind not in (PIPELINE, BASE):
        raise ValueError(f"--base {base} is a {model.kind}, not a pipeline")
    return model


def _write_own_files(
    staging: Path, path: Path, config: dict, base: StoredModel, family: str
) -> tuple[Path, set[str]]:
    """The new model's own files in the staging folder (the rest are the base's, linked): the
    file as given, its transformer config, and a scheduler config where the variant differs.
    Returns the staged file and every written path relative to the folder."""
    (staging / TRANSFORMER).mkdir()
    # The file keeps its name, unless it is diffusers' own weight name (then the folder would
    # look diffusers-laid-out and the engine would not load it as a single file).
    target = path.name if not path.name.startswith("diffusion_pytorch_model") else f"transformer{path.suffix.lower()}"
    _link_or_copy(str(path), str(staging / TRANSFORMER / target))  # the store's save makes the one copy
    (staging / TRANSFORMER / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    written = {f"{TRANSFORMER}/{target}", f"{TRANSFORMER}/config.json"}
    scheduler = read_config(base.path / "scheduler" / "scheduler_config.json")
    if family != base.family and family in FLUX1_SCHEDULERS and scheduler:
        (staging / "scheduler").mkdir()
        scheduler.update(FLUX1_SCHEDULERS[family])
        (staging / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        written.add("scheduler/scheduler_config.json")
    return staging / TRANSFORMER / target, written


def _files_of(folder: Path) -> list[str]:
    """A stored version's files, relative, bentoml's own left out."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and str(p.relative_to(folder)) not in _BENTOML_FILES)


def _check_loads(file: TransformerFile, staged: Path, staging: Path, base: str) -> None:
    """Check the transformer would load as the engine will, so a file that does not fit the
    base's config (another size, a truncated tensor) fails the import rather than the first
    request. An unquantized file is checked without loading it (its header against the model
    built on the meta device: check_transformer_file); a GGUF, a quarter of the size and kept
    quantized in memory, is loaded."""
    import torch

    try:
        if file.is_gguf:
            model = load_transformer_file(staged, staging, torch.bfloat16)
            del model
            gc.collect()  # gigabytes of weights: do not hold them until the next collection
        else:
            check_transformer_file(staged, staging)
    except Exception as exc:  # diffusers raises many kinds for files that do not fit
        raise ValueError(
            f"{file.path.name} does not load as a {file.family} transformer with {base}'s config (a model of "
            f"another size, or tensors diffusers cannot convert): {type(exc).__name__}: {exc}"
        ) from exc


def holds_no_transformer(folder: Path) -> bool:
    """Whether a transformer family's diffusers folder lacks its transformer's weights (a base)."""
    try:
        family = family_named(detect_family(folder))
    except ValueError:
        return False
    weights = [p for p in (Path(folder) / TRANSFORMER).glob("*") if p.suffix.lower() in (*SUFFIXES, ".bin")]
    return family.denoiser == TRANSFORMER and not weights


def import_base_folder(folder: Path, name: str, *, source: str = "local") -> StoredModel:
    """Store a transformer family's diffusers folder that has no transformer weights as a base:
    not servable, but what `--base` takes. Its other parts are checked to load first."""
    validate_model_name(name)
    folder = Path(folder)
    family = family_named(detect_family(folder))
    _check_parts_load(folder)
    return store_folder(folder, name, kind=BASE, family=family.name, source=source)


def _check_parts_load(folder: Path) -> None:
    """Its text encoders, tokenizers, scheduler and VAE, checked without loading them
    (T5 alone is 9.5 GB): built on the meta device against their files' headers."""
    try:
        check_folder_loads(folder, skip=(TRANSFORMER,))
    except FolderDoesNotLoad as exc:
        raise ValueError(f"{folder}'s text encoders, tokenizers or VAE do not load: {exc}") from None
