"""ALICE's models in the Bento model store (`BENTOML_HOME/models`).

Every model ALICE stores is labelled `alice: <kind>` so other models living in the same
store are left alone. A model's name is its id; each import makes a new version and the
newest one is served.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from alice.engine.demo import DEMO_MODEL_NAME, save_demo_pipeline
from alice.engine.pipelines import choose_placement, load_pipeline

logger = logging.getLogger("alice.models")

LABEL = "alice"
PIPELINE = "pipeline"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class ModelNotFound(KeyError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' is not in the model store")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


class InvalidModelName(ValueError):
    pass


@dataclass(frozen=True)
class StoredModel:
    name: str
    tag: str
    path: Path
    family: str  # sd15 | sd2 | sdxl
    kind: str  # pipeline (lora later)
    size_bytes: int
    created: datetime
    source: str


def validate_model_name(name: str) -> str:
    """Bento tag rules; also what keeps a user-given id from naming a path."""
    if not _NAME.fullmatch(name):
        raise InvalidModelName(
            f"invalid model name {name!r}: use 1 to 63 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
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
    """Check the folder loads as a pipeline (the serving code path), then store a copy."""
    validate_model_name(name)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    try:
        load_pipeline(folder, choose_placement("cpu", "float32"))
    except Exception as exc:
        raise ValueError(f"{folder} does not load as a diffusers pipeline: {exc}") from exc
    family = detect_family(folder)
    with bentoml.models.create(
        name, labels={LABEL: PIPELINE, "family": family}, metadata={"source": source, "family": family}
    ) as model:
        shutil.copytree(folder, model.path, dirs_exist_ok=True)
    logger.info("imported %s (%s) as %s", folder, family, model.tag)
    return get_model(name)


def list_models() -> list[StoredModel]:
    """ALICE's models, the newest version of each, by name."""
    newest: dict[str, StoredModel] = {}
    for model in bentoml.models.list():
        if LABEL not in model.info.labels:
            continue
        stored = _stored(model)
        if stored.name not in newest or stored.created > newest[stored.name].created:
            newest[stored.name] = stored
    return [newest[name] for name in sorted(newest)]


def get_model(name: str) -> StoredModel:
    validate_model_name(name)
    try:
        model = bentoml.models.get(f"{name}:latest")
    except NotFound:
        raise ModelNotFound(name) from None
    if LABEL not in model.info.labels:
        raise ModelNotFound(name)
    return _stored(model)


def delete_model(name: str) -> None:
    """Every version of an ALICE model."""
    validate_model_name(name)
    versions = [m for m in bentoml.models.list(name) if LABEL in m.info.labels]
    if not versions:
        raise ModelNotFound(name)
    for model in versions:
        bentoml.models.delete(model.tag)
    logger.info("deleted model %s", name)


def ensure_demo_model() -> StoredModel:
    """The demo model, built and stored the first time."""
    try:
        return get_model(DEMO_MODEL_NAME)
    except ModelNotFound:
        pass
    with tempfile.TemporaryDirectory() as scratch:
        save_demo_pipeline(Path(scratch))
        return import_pipeline_folder(Path(scratch), DEMO_MODEL_NAME, source="demo")


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
        created=created,
        source=str(model.info.metadata.get("source", "")),
    )


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
