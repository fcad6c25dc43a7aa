"""Bringing weights into the model store: a diffusers folder (checked to load with the serving
code), a single-file checkpoint (converted into such a folder offline first), a LoRA file, and
the shipped demo. The store itself (alice/models/store.py) only keeps what it is given.
"""

from __future__ import annotations

import gc
import hashlib
import shutil
import tempfile
from pathlib import Path

from safetensors import safe_open

from alice.engine.demo import DEMO_MODEL_DIR, DEMO_MODEL_NAME
from alice.engine.embeddings import EMBEDDING_FILE, embedding_family, read_embedding
from alice.engine.families import detect_family, family_named, lora_family
from alice.engine.folder_check import FolderDoesNotLoad, check_folder_loads
from alice.engine.pipeline_configs import read_config
from alice.engine.pipeline_files import read_pipeline_file
from alice.engine.pipelines import choose_placement, load_pipeline
from alice.engine.preview_decoders import is_tiny_autoencoder_folder, load_tiny_autoencoder, preview_family
from alice.engine.single_file import convert_single_file, detect_checkpoint_family
from alice.engine.text_encoder_files import is_t5_gguf
from alice.engine.transformer_files import check_not_bnb_single_file, is_transformer_file
from alice.engine.transformer_files import is_transformer_file
from alice.models.pipeline_files import import_pipeline_file
from alice.models.store import (
    EMBEDDING,
    LORA,
    LORA_FILE,
    PIPELINE,
    PREVIEW,
    ModelNotFound,
    StoredModel,
    get_model,
    store_folder,
    validate_model_name,
)
from alice.models.text_encoder_imports import import_t5_file, import_t5_folder
from alice.models.transformer_imports import (
    holds_no_transformer,
    import_base_folder,
    import_transformer_file,
    import_transformer_folder,
)


def import_pipeline_folder(folder: Path, name: str, *, source: str = "local") -> StoredModel:
    """Tell the folder's family (UnknownFamily, a ValueError, for none ALICE knows), check it
    loads as that family's pipeline (the serving code path), then store a copy labelled with it."""
    validate_model_name(name)
    folder = Path(folder)
    if is_tiny_autoencoder_folder(folder):  # a TAESD-like decoder for previews, not a model to draw with
        return import_preview_decoder_folder(folder, name, source=source)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (it has no model_index.json)")
    if holds_no_transformer(folder):  # text encoders and VAE alone: a base for transformer files
        return import_base_folder(folder, name, source=source)
    family = detect_family(folder)
    _check_loads(folder, family)
    return store_folder(folder, name, kind=PIPELINE, family=family, source=source)


def import_preview_decoder_folder(
    folder: Path, name: str, *, family: str | None = None, source: str = "local"
) -> StoredModel:
    """Store a tiny autoencoder folder (diffusers' AutoencoderTiny) for live previews, labelled
    with the family it was made for: `family`, else the released name (taesd, taesdxl, taesd3,
    taef1) in the folder's, the model's or the source's name; checked to load on the CPU.
    It previews every family sharing that family's latents (SD 1.x and 2.x; FLUX.1, Chroma, Z-Image)."""
    import torch

    validate_model_name(name)
    folder = Path(folder)
    family = preview_family(folder, family, hints=(name, folder.name, source))  # a ValueError says why not
    try:
        load_tiny_autoencoder(folder, "cpu", torch.float32)
    except Exception as exc:  # missing or mis-shaped weights
        raise ValueError(f"{folder} does not load as a tiny autoencoder: {type(exc).__name__}: {exc}") from exc
    return store_folder(folder, name, kind=PREVIEW, family=family, source=source)


def import_checkpoint_file(path: Path, name: str, *, source: str = "local", base: str | None = None) -> StoredModel:
    """Convert a single-file `.safetensors` checkpoint (SD 1.x, 2.x or SDXL, told apart by its
    weights) into a diffusers folder offline, then import that like any pipeline folder.
    A transformer family's all-in-one file (SD3, FLUX.1, Chroma, Z-Image) is converted with the
    shipped configs, the parts it lacks taken from `base` (alice/models/pipeline_files.py).
    A transformer-only file (a `.gguf`, a FLUX fine-tune) takes its other parts from the stored
    model `base` (alice/models/transformer_imports.py)."""
    validate_model_name(name)
    path = Path(path)
    if base is None and is_embedding_file(path):
        return import_embedding_file(path, name, source=source)
    if is_t5_gguf(path):  # a quantized T5 in place of the base's (alice/models/text_encoder_imports.py)
        return import_t5_file(path, name, base=base, source=source)
    if path.suffix.lower() == ".safetensors":
        check_not_bnb_single_file(path)  # Forge's NF4 checkpoints: refused saying what loads instead
        whole = read_pipeline_file(path)
        if whole is not None:
            return import_pipeline_file(whole, name, base=base, source=source)
    if base is not None or is_transformer_file(path):
        return import_transformer_file(path, name, base=base, source=source)
    family = detect_checkpoint_family(path)  # ValueError for a LoRA or anything else
    with tempfile.TemporaryDirectory(prefix="alice-convert-") as scratch:
        try:
            convert_single_file(path, Path(scratch), family)
        except Exception as exc:  # shapes that do not fit the family, truncated files, ...
            raise ValueError(f"{path} does not convert as an {family} checkpoint: {type(exc).__name__}: {exc}") from exc
        return import_pipeline_folder(Path(scratch), name, source=source)


def import_folder_onto_base(folder: Path, name: str, *, base: str, source: str = "local") -> StoredModel:
    """A transformer folder (an NF4 one saved by diffusers) or a T5 encoder folder (NF4 or 8-bit,
    saved by transformers) onto the stored model `base`, told apart by its config.json."""
    if read_config(Path(folder) / "config.json").get("model_type") in ("t5", "umt5"):
        return import_t5_folder(folder, name, base=base, source=source)
    return import_transformer_folder(folder, name, base=base, source=source)


def import_lora_file(path: Path, name: str, *, source: str = "local") -> StoredModel:
    """Store a LoRA `.safetensors` file labelled with the family its tensor names tell: SD 1.x,
    2.x or XL (kohya/A1111 or diffusers/peft names), or the transformer families whose LoRA names
    fit it (`flux1-dev`, which schnell and Chroma share; `zimage`; several, comma-separated, where
    the names are alike: families.lora_family). The label lets a request that puts it on a model
    of another kind be refused before the queue (families.lora_refusal)."""
    validate_model_name(name)
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as weights:
            keys = list(weights.keys())
    except Exception as exc:
        raise ValueError(f"{path} is not a readable .safetensors file ({type(exc).__name__})") from None
    if not any("lora" in key for key in keys):
        raise ValueError(f"{path} holds no LoRA weights (no 'lora' tensors)")
    family = lora_family(keys)
    with tempfile.TemporaryDirectory(prefix="alice-lora-") as scratch:
        shutil.copyfile(path, Path(scratch) / LORA_FILE)
        return store_folder(Path(scratch), name, kind=LORA, family=family, source=source)


def is_embedding_file(path: Path) -> bool:
    """A `.pt` (A1111's embeddings are the only pickles ALICE takes), or a `.safetensors` whose
    tensors are an embedding's (`emb_params`, or `clip_l` and `clip_g`)."""
    if path.suffix in (".pt", ".bin"):
        return True
    try:
        with safe_open(str(path), framework="pt") as weights:
            keys = set(weights.keys())
    except Exception:
        return False
    return keys == {"emb_params"} or keys == {"clip_l", "clip_g"}


def import_embedding_file(path: Path, name: str, *, source: str = "local") -> StoredModel:
    """Store a textual-inversion embedding (A1111's layouts: alice/engine/embeddings.py),
    labelled with the family its width tells (768 SD 1.x, 1024 SD 2.x, 768 + 1280 SDXL; `other`
    for a width of no released family: it still names vectors for a model whose encoder is that
    wide). Kept as a `.safetensors` of `clip_l` (and `clip_g`), whatever it came as."""
    from safetensors.torch import save_file

    validate_model_name(name)
    vectors = read_embedding(Path(path))  # ValueError for no layout it knows
    family = embedding_family(vectors) or "other"
    with tempfile.TemporaryDirectory(prefix="alice-embedding-") as scratch:
        save_file(vectors, str(Path(scratch) / EMBEDDING_FILE))
        return store_folder(Path(scratch), name, kind=EMBEDDING, family=family, source=source)


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


def _check_loads(folder: Path, family: str | None = None) -> None:
    """Load the folder with the serving code; any failure means it is not a usable pipeline.
    A transformer family's folder (tens of GB) is checked without loading it: every component
    built on the meta device against its weight files' headers (alice/engine/folder_check.py)."""
    if family is not None and not family_named(family).is_unet:
        try:
            check_folder_loads(folder)
        except FolderDoesNotLoad as exc:
            raise ValueError(f"{folder} does not load as a {family} pipeline: {exc}") from None
        return
    try:
        pipe = load_pipeline(folder, choose_placement("cpu"))
    except Exception as exc:  # diffusers raises many kinds for broken folders
        raise ValueError(f"{folder} does not load as a diffusers pipeline: {type(exc).__name__}: {exc}") from exc
    del pipe
    gc.collect()  # real SD weights are gigabytes: do not hold them until the next collection
