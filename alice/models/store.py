"""ALICE's models in the Bento model store (`$BENTOML_HOME/models`).

Every model ALICE stores is labelled `alice: <kind>` (plus `family`), so other models
living in the same store are left alone. A model's name is its id; each import makes a
new bentoml version and the newest one is the one served.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import bentoml
from safetensors import safe_open
from bentoml.exceptions import NotFound

from alice.engine.demo import DEMO_MODEL_DIR, DEMO_MODEL_NAME
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.single_file import convert_single_file, detect_checkpoint_family

logger = logging.getLogger("alice.models")

LABEL = "alice"  # label key that marks a model as ALICE's; its value is the kind
PIPELINE = "pipeline"
LORA = "lora"
LORA_FILE = "lora.safetensors"  # the one file in a stored LoRA's folder
FAMILIES = ("sd15", "sd2", "sdxl")
# bentoml's own tag rule (bentoml._internal.tag): 1-63 chars, lowercase alnum at both ends.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,61}[a-z0-9])?")


class ModelNotFound(KeyError):
    """No ALICE model of that name is in the store."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' is not in the model store")
        self.name = name

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class LoraNotFound(ModelNotFound):
    """No LoRA of that name is in the store."""

    def __init__(self, name: str) -> None:
        KeyError.__init__(self, f"LoRA '{name}' is not in the model store")
        self.name = name


class InvalidModelName(ValueError):
    """The name breaks bentoml's tag rules (and so could never name a stored model)."""


@dataclass(frozen=True)
class StoredModel:
    """One model in the store, at its newest version."""

    name: str
    tag: str  # name:version
    path: Path
    family: str  # sd15 | sd2 | sdxl
    kind: str  # pipeline (lora later)
    size_bytes: int
    created: datetime  # UTC
    source: str = ""  # where it came from: local, demo, a hub repo id

    @property
    def native_size(self) -> int:
        """The side it was trained at (512 SD 1.5, 768 SD 2.x, 1024 SDXL), read when asked:
        only a request without a size needs it."""
        return native_size(self.path)

    @property
    def text_encoder_layers(self) -> int | None:
        """Layers of its (smallest) text encoder, which bound `clip_skip`; None = unknown."""
        return text_encoder_layers(self.path)


def validate_model_name(name: str) -> str:
    """Return `name` if it is a valid model id; it also keeps a user-given id from naming a path."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1 to 63 lowercase letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def detect_family(folder: Path) -> str:
    """SD 1.x, 2.x or SDXL, from the weights' configs rather than the name."""
    index = _read_json(folder / "model_index.json")
    if str(index.get("_class_name", "")).startswith("StableDiffusionXL"):
        return "sdxl"
    cross_attention = _read_json(folder / "unet" / "config.json").get("cross_attention_dim")
    if cross_attention == 2048:
        return "sdxl"
    if cross_attention == 1024:
        return "sd2"
    return "sd15"


def import_pipeline_folder(folder: Path, name: str, *, source: str = "local") -> StoredModel:
    """Check the folder loads as a pipeline (the serving code path), then store a copy of it."""
    validate_model_name(name)
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (it has no model_index.json)")
    _check_loads(folder)
    family = detect_family(folder)
    return _store_folder(folder, name, kind=PIPELINE, family=family, source=source)


def import_checkpoint_file(path: Path, name: str, *, source: str = "local") -> StoredModel:
    """Convert a single-file `.safetensors` checkpoint (SD 1.x, 2.x or SDXL, told apart by its
    weights) into a diffusers folder offline, then import that like any pipeline folder."""
    validate_model_name(name)
    path = Path(path)
    family = detect_checkpoint_family(path)  # ValueError for a LoRA or anything else
    with tempfile.TemporaryDirectory(prefix="alice-convert-") as scratch:
        try:
            convert_single_file(path, Path(scratch), family)
        except Exception as exc:  # shapes that do not fit the family, truncated files, ...
            raise ValueError(f"{path} does not convert as an {family} checkpoint: {type(exc).__name__}: {exc}") from exc
        return import_pipeline_folder(Path(scratch), name, source=source)


def import_lora_file(path: Path, name: str, *, source: str = "local") -> StoredModel:
    """Store a LoRA `.safetensors` file (kohya/A1111 or diffusers/peft key layout)."""
    validate_model_name(name)
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as weights:
            keys = list(weights.keys())
    except Exception as exc:
        raise ValueError(f"{path} is not a readable .safetensors file ({type(exc).__name__})") from None
    if not any("lora" in key for key in keys):
        raise ValueError(f"{path} holds no LoRA weights (no 'lora' tensors)")
    family = "sdxl" if any(key.startswith(("lora_te2_", "text_encoder_2.")) for key in keys) else "sd15"
    with tempfile.TemporaryDirectory(prefix="alice-lora-") as scratch:
        shutil.copyfile(path, Path(scratch) / LORA_FILE)
        return _store_folder(Path(scratch), name, kind=LORA, family=family, source=source)


def get_lora(name: str) -> StoredModel:
    """A stored LoRA by name; LoraNotFound if there is none (or the name is a pipeline)."""
    try:
        model = get_model(name)
    except ModelNotFound:
        raise LoraNotFound(name) from None
    if model.kind != LORA:
        raise LoraNotFound(name)
    return model


def _store_folder(folder: Path, name: str, *, kind: str, family: str, source: str) -> StoredModel:
    labels = {LABEL: kind, "family": family}
    staging: str | None = None
    try:
        with bentoml.models.create(name, labels=labels, metadata={"source": source, "family": family}) as model:
            # create() stages in a temp folder, then copies that into the store.
            staging = model.path
            shutil.copytree(
                folder, staging, dirs_exist_ok=True, ignore=_bentoml_own_files(folder), copy_function=_link_or_copy
            )
    finally:
        # bentoml 1.4 never removes its staging folder, on success or failure: without
        # this every import would leave a full copy of the weights in the temp dir.
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("imported %s (%s %s) as %s", folder, kind, family, model.tag)
    return get_model(name)


def list_models() -> list[StoredModel]:
    """ALICE's models (by label), the newest version of each, sorted by name."""
    newest: dict[str, StoredModel] = {}
    for model in bentoml.models.list():
        if LABEL not in model.info.labels:
            continue
        stored = _stored(model)
        if stored.name not in newest or stored.created > newest[stored.name].created:
            newest[stored.name] = stored
    return [newest[name] for name in sorted(newest)]


def get_model(name: str) -> StoredModel:
    """The newest version of an ALICE model; ModelNotFound if absent or not ALICE's."""
    validate_model_name(name)
    try:
        model = bentoml.models.get(f"{name}:latest")
    except NotFound:
        raise ModelNotFound(name) from None
    if LABEL not in model.info.labels:
        raise ModelNotFound(name)
    return _stored(model)


def delete_model(name: str) -> None:
    """Remove every version of an ALICE model; other models of that name are left alone."""
    validate_model_name(name)
    try:
        versions = [m for m in bentoml.models.list(name) if LABEL in m.info.labels]
    except NotFound:
        versions = []
    if not versions:
        raise ModelNotFound(name)
    for model in versions:
        bentoml.models.delete(model.tag)
    logger.info("deleted model %s (%d version(s))", name, len(versions))


def ensure_demo_model() -> StoredModel:
    """The shipped demo model in the store: imported the first time, and again (as a new
    version) when the shipped weights have changed since, so a retrained demo is served."""
    source = f"demo:{_demo_fingerprint()}"
    try:
        stored = get_model(DEMO_MODEL_NAME)
        if stored.source == source:
            return stored
    except ModelNotFound:
        pass
    return import_pipeline_folder(DEMO_MODEL_DIR, DEMO_MODEL_NAME, source=source)


def _demo_fingerprint() -> str:
    """A short digest of the shipped demo's files, names and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in DEMO_MODEL_DIR.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(DEMO_MODEL_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _check_loads(folder: Path) -> None:
    """Load the folder with the serving code; any failure means it is not a usable pipeline."""
    try:
        pipe = load_pipeline(folder, choose_placement("cpu"))
    except Exception as exc:  # diffusers raises many kinds for broken folders
        raise ValueError(f"{folder} does not load as a diffusers pipeline: {type(exc).__name__}: {exc}") from exc
    del pipe
    gc.collect()  # real SD weights are gigabytes: do not hold them until the next collection


def _bentoml_own_files(folder: Path) -> Callable[[str, list[str]], list[str]]:
    """Leave out a top-level model.yaml: bentoml writes its own there (through a hard link
    that would overwrite the user's file)."""

    def ignore(directory: str, names: list[str]) -> list[str]:
        return ["model.yaml"] if Path(directory) == folder and "model.yaml" in names else []

    return ignore


def _link_or_copy(src: str, dst: str) -> Any:
    """Hard-link into the staging folder when possible: bentoml copies it into the store anyway."""
    try:
        os.link(src, dst)
        return dst
    except OSError:  # another filesystem, or links not allowed
        return shutil.copy2(src, dst)


def _stored(model: bentoml.Model) -> StoredModel:
    path = Path(model.path)
    created = model.info.creation_time
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return StoredModel(
        name=model.tag.name,
        tag=str(model.tag),
        path=path,
        family=str(model.info.labels.get("family", "sd15")),
        kind=str(model.info.labels[LABEL]),
        size_bytes=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        created=created.astimezone(timezone.utc),
        source=str(model.info.metadata.get("source", "")),
    )


def native_size(folder: Path) -> int:
    """The image side a pipeline folder was trained for, as diffusers derives its default:
    the UNet's latent sample size times the VAE's downscale (2 per block after the first)."""
    sample = _read_json(folder / "unet" / "config.json").get("sample_size")
    blocks = _read_json(folder / "vae" / "config.json").get("block_out_channels") or [0] * 4
    if isinstance(sample, list):  # some configs give [height, width]
        sample = sample[0]
    return int(sample) * 2 ** (len(blocks) - 1) if isinstance(sample, int) and sample > 0 else 512


def text_encoder_layers(folder: Path) -> int | None:
    """The fewest hidden layers of a pipeline folder's text encoders (SDXL has two)."""
    layers = [
        _read_json(folder / encoder / "config.json").get("num_hidden_layers")
        for encoder in ("text_encoder", "text_encoder_2")
    ]
    known = [count for count in layers if isinstance(count, int) and count > 0]
    return min(known) if known else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
