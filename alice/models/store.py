"""ALICE's models in the Bento model store (`$BENTOML_HOME/models`).

Every model ALICE stores is labelled `alice: <kind>` (plus `family`), so other models
living in the same store are left alone. A model's name is its id; each import makes a
new bentoml version and the newest one is the one served. What is stored is checked and
converted first by alice/models/checkpoints.py.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import bentoml
from bentoml._internal.configuration.containers import BentoMLContainer
from bentoml.exceptions import NotFound

from alice.engine.families import DEFAULT_FAMILY, FAMILIES, Family
from alice.engine.pipeline_configs import is_inpainting_checkpoint, native_size, text_encoder_layers
from alice.engine.preview_decoders import families_sharing_latents

logger = logging.getLogger("alice.models")

LABEL = "alice"  # label key that marks a model as ALICE's; its value is the kind
PIPELINE = "pipeline"
LORA = "lora"
# A pipeline without its transformer (text encoders, tokenizers, VAE, scheduler): not servable,
# the parts a transformer-only file is imported onto (`alice models import FILE --base NAME`).
BASE = "base"
# A textual-inversion embedding (alice/engine/embeddings.py): named by prompts, not drawn with.
EMBEDDING = "embedding"
# A tiny autoencoder (diffusers' AutoencoderTiny: TAESD, TAEF1, ...) labelled with the family it
# was made for: live previews of that family's models (and those sharing its latents) at full size.
PREVIEW = "preview"
LORA_FILE = "lora.safetensors"  # the one file in a stored LoRA's folder
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
    family: str  # a name of alice/engine/families.py: sd15, sdxl, flux1-dev, ...
    kind: str  # pipeline (lora later)
    size_bytes: int
    created: datetime  # UTC
    source: str = ""  # where it came from: local, demo, a hub repo id

    @property
    def family_facts(self) -> Family:
        """Its family's entry (what a label of a family this ALICE does not know is drawn as: SD 1.x)."""
        return FAMILIES.get(self.family, DEFAULT_FAMILY)

    # Read from its config files once per lookup: get_model hands every request the same
    # StoredModel while the store's entry is unchanged, so these reads are not per request.
    @functools.cached_property
    def native_size(self) -> int:
        """The side it was trained at (512 SD 1.5, 768 SD 2.x, 1024 SDXL and the transformer
        families)."""
        family = self.family_facts
        return native_size(self.path, family.denoiser, family.native_size)

    @functools.cached_property
    def inpainting(self) -> bool:
        """A dedicated inpainting checkpoint (a UNet of 9 input channels): everything it draws is
        drawn through its inpaint pipeline (unmasked edits and text to image all masked)."""
        return self.kind == PIPELINE and self.family_facts.inpaint is not None and is_inpainting_checkpoint(self.path)

    @functools.cached_property
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


def get_lora(name: str) -> StoredModel:
    """A stored LoRA by name; LoraNotFound if there is none (or the name is a pipeline)."""
    try:
        model = get_model(name)
    except ModelNotFound:
        raise LoraNotFound(name) from None
    if model.kind != LORA:
        raise LoraNotFound(name)
    return model


def embeddings() -> list[StoredModel]:
    """The stored textual-inversion embeddings."""
    return [model for model in list_models() if model.kind == EMBEDDING]


def preview_decoders() -> list[StoredModel]:
    """The stored tiny autoencoders for live previews."""
    return [model for model in list_models() if model.kind == PREVIEW]


def preview_decoder_for(family: str) -> StoredModel | None:
    """The stored tiny autoencoder that decodes `family`'s latents (the newest import, where
    several do), or None."""
    fitting = [m for m in preview_decoders() if family in families_sharing_latents(m.family)]
    return max(fitting, key=lambda m: m.created, default=None)


def store_folder(
    folder: Path, name: str, *, kind: str, family: str, source: str, linked: Mapping[str, Path] | None = None
) -> StoredModel:
    """Store a copy of a folder as a new version of `name`, labelled as ALICE's (checked by the caller).

    `linked` adds files (relative path -> a file already in the store) as hard links, where
    the filesystem allows, after bentoml has saved the version: its save copies every staged
    file, so a link staged would become a second copy of another model's weights.
    """
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
    if linked:
        _link_into(Path(bentoml.models.get(model.tag).path), linked, str(model.tag))
    logger.info("imported %s (%s %s) as %s", folder, kind, family, model.tag)
    return get_model(name)


def _link_into(target: Path, linked: Mapping[str, Path], tag: str) -> None:
    """Hard-link (else copy) the files into a saved version; a failure removes the version,
    which would otherwise be served without them."""
    try:
        for relative, source in linked.items():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(str(source), str(destination))
    except BaseException:
        bentoml.models.delete(tag)
        raise
    logger.debug("linked %d file(s) into %s", len(linked), tag)


def list_models() -> list[StoredModel]:
    """ALICE's models (by label), the newest version of each, sorted by name."""
    global _listed
    snapshot = _store_snapshot()
    listed = _listed
    if listed is not None and snapshot is not None and listed[0] == snapshot:
        return list(listed[1])
    newest: dict[str, StoredModel] = {}
    for model in bentoml.models.list():
        if LABEL not in model.info.labels:
            continue
        stored = _stored(model)
        if stored.name not in newest or stored.created > newest[stored.name].created:
            newest[stored.name] = stored
    models = [newest[name] for name in sorted(newest)]
    if snapshot is not None:
        _listed = (snapshot, models)
    return list(models)


# Every generation request lists the store (the embeddings its prompt may name) and so does every
# batch: bentoml.models.list parses each version's YAML and _stored walks each one's files (27 ms
# for the demo store alone on the 2-core dev box, 0.03 ms reused). The listing is reused while no
# name's entry changed, nor the set of names: a listing of the store's folder and stats per name.
_listed: tuple[tuple[Any, ...], list[StoredModel]] | None = None


def _store_snapshot() -> tuple[Any, ...] | None:
    """What changes when any model of the store does; None when some entry cannot be read."""
    root = Path(BentoMLContainer.model_store.get()._path)
    try:
        # A folder with no `latest` (being written, or not bentoml's) counts by its own stat.
        states = tuple(_store_state(entry.name) or (entry.name, entry.stat().st_mtime_ns)
                       for entry in sorted(os.scandir(root), key=lambda entry: entry.name) if entry.is_dir())
    except OSError:
        return None
    return (str(root), *states)


def get_model(name: str) -> StoredModel:
    """The newest version of an ALICE model; ModelNotFound if absent or not ALICE's."""
    validate_model_name(name)
    state = _store_state(name)
    found = _found.get(name)
    if found and state is not None and found[0] == state:
        return found[1]
    try:
        model = bentoml.models.get(f"{name}:latest")
    except NotFound:
        raise ModelNotFound(name) from None
    if LABEL not in model.info.labels:
        raise ModelNotFound(name)
    stored = _stored(model)
    if state is not None:
        _found[name] = (state, stored)
    return stored


# Every generation request looks its model up: bentoml.models.get parses the version's YAML and
# _stored walks its files for the size (1.7 ms of CPU per request on the 2-core dev box, before
# the job is queued). A lookup is reused while the store's entry for the name is unchanged: an
# import rewrites `latest`, an import or delete adds or removes a version's folder (which
# changes the name's folder), checked with two stat calls (by this or any other process).
_found: dict[str, tuple[tuple[Any, ...], StoredModel]] = {}


def _store_state(name: str) -> tuple[Any, ...] | None:
    """What changes when the store's versions of `name` do; None when it cannot be read."""
    folder = Path(BentoMLContainer.model_store.get()._path) / name
    try:
        entry, latest = folder.stat(), (folder / "latest").stat()
    except OSError:
        return None
    return (str(folder), entry.st_ino, entry.st_mtime_ns, latest.st_ino, latest.st_mtime_ns, latest.st_size)


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
