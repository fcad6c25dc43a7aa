"""Textual-inversion embeddings (CivitAI's "TextualInversion" files, such as EasyNegative): read in
A1111's layouts, and named in prompts for one run.

A1111's files: a `.pt` with `string_to_param` ({"*": vectors}) or `emb_params`, a `.safetensors`
with `emb_params`, and SDXL's with `clip_l` (768 wide) and `clip_g` (1280). A `.pt` is a pickle:
it is read with `torch.load(weights_only=True)`, which unpickles tensors and plain containers
only, never code, so a hostile file fails to load instead of running.

A prompt names an embedding by its name as a word of its own, case ignored (A1111 matches the
name's tokens, and an embedding wins over the word of the same name). For the run each
embedding is loaded with diffusers' `load_textual_inversion` under a token no prompt can write,
its name in the prompts spelled as that token, and unloaded after, so the model stays clean.
An embedding whose width fits none of the model's encoders is no embedding for it (A1111 skips
those too): its name stays a word.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alice.engine.prompt_embeds import clip_encoders
from alice.engine.text_cache import forget_text_outputs

if TYPE_CHECKING:  # imported where they run: see alice/engine/__init__.py
    import torch
    from diffusers import DiffusionPipeline

EMBEDDING_FILE = "embedding.safetensors"  # the one file in a stored embedding's folder, in ALICE's layout
# Family by the vectors' width: CLIP ViT-L (SD 1.x), OpenCLIP ViT-H (SD 2.x), both SDXL encoders.
_FAMILY_BY_WIDTH = {(768,): "sd15", (1024,): "sd2", (768, 1280): "sdxl"}
_ATTRIBUTE = "_alice_embeddings"


def read_embedding(path: Path) -> dict[str, torch.Tensor]:
    """The vectors of an A1111 embedding file as {"clip_l": (n, width)} or, for SDXL, with
    "clip_g" too; ValueError for a file of no layout ALICE knows."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    try:
        data = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
            str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path.name} is not a readable embedding file ({type(exc).__name__})") from None
    if isinstance(data, dict) and "clip_l" in data and "clip_g" in data:
        vectors = {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    elif isinstance(data, dict) and isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:
        vectors = {"clip_l": next(iter(data["string_to_param"].values()))}
    elif isinstance(data, dict) and "emb_params" in data:
        vectors = {"clip_l": data["emb_params"]}
    else:
        raise ValueError(f"{path.name} holds no textual-inversion vectors (no string_to_param, emb_params, or clip_l/clip_g)")
    for key, tensor in vectors.items():
        if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or not tensor.numel():
            raise ValueError(f"{path.name}: '{key}' is not a list of vectors")
        vectors[key] = tensor.detach().reshape(-1, tensor.shape[-1]).float().contiguous()
    return vectors


def embedding_family(vectors: dict[str, torch.Tensor]) -> str | None:
    """The family an embedding is for, by its vectors' width (None: a width of no released family)."""
    return _FAMILY_BY_WIDTH.get(tuple(tensor.shape[-1] for tensor in vectors.values()))


def named_in(text: str, name: str) -> bool:
    return _word(name).search(text) is not None


def spelled_out(text: str, name: str, spelling: str) -> str:
    """The text with each mention of the embedding `name` written as `spelling` (as the engine
    writes it as its token)."""
    return _word(name).sub(lambda _: spelling, text)


def embedding_shape(path: Path) -> tuple[tuple[int, ...], int]:
    """A stored embedding's widths (one per encoder) and its number of vectors, from the file's
    header alone: each vector takes a token of the prompt, as in A1111."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        shapes = [weights.get_slice(key).get_shape() for key in ("clip_l", "clip_g") if key in weights.keys()]
    return tuple(shape[-1] for shape in shapes), shapes[0][0]


@contextlib.contextmanager
def embeddings_applied(pipe: DiffusionPipeline, embeddings: Sequence[tuple[str, Path]]) -> Iterator[None]:
    """Load each (name, stored file) that fits the pipeline's encoders for the duration, then
    unload them all (whatever failed half-way)."""
    from safetensors.torch import load_file

    fitting = []
    for name, path in embeddings:
        vectors = load_file(str(path))
        if _fits(pipe, vectors):
            fitting.append((name, vectors))
    if not fitting:
        yield
        return
    tokens: dict[str, str] = {}
    forget_text_outputs(pipe)  # new tokens: outputs kept by id no longer hold
    try:
        for name, vectors in fitting:
            token = f"<alice-embedding-{len(tokens)}>"
            # SDXL: the first encoder's vectors, then the second's, each under the same token.
            for key, (tokenizer, encoder) in zip(("clip_l", "clip_g"), clip_encoders(pipe)):
                pipe.load_textual_inversion(vectors[key], token=token, tokenizer=tokenizer, text_encoder=encoder)
            tokens[name] = token
        setattr(pipe, _ATTRIBUTE, tokens)
        yield
    finally:
        if hasattr(pipe, _ATTRIBUTE):
            delattr(pipe, _ATTRIBUTE)
        for tokenizer, encoder in clip_encoders(pipe):
            pipe.unload_textual_inversion(tokens=_added(tokenizer, tokens.values()), tokenizer=tokenizer,
                                          text_encoder=encoder)
        forget_text_outputs(pipe)


def spell_embeddings(pipe: DiffusionPipeline, text: str) -> str:
    """The prompt with each loaded embedding's name written as its token."""
    for name, token in getattr(pipe, _ATTRIBUTE, {}).items():
        text = spelled_out(text, name, token)
    return text


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w]){re.escape(name)}(?![\w])", re.IGNORECASE)


def _fits(pipe: DiffusionPipeline, vectors: dict[str, torch.Tensor]) -> bool:
    if not hasattr(pipe, "load_textual_inversion"):  # SD 3's CLIP pair is as wide as SDXL's, and takes none
        return False
    encoders = clip_encoders(pipe)
    widths = [encoder.get_input_embeddings().weight.shape[-1] for _, encoder in encoders]
    return len(vectors) == len(encoders) and all(v.shape[-1] == w for v, w in zip(vectors.values(), widths))


def _added(tokenizer: object, tokens: Iterator[str] | Sequence[str]) -> list[str]:
    """The tokens diffusers added for ours: the token, and `token_1`... for each further vector."""
    vocabulary = tokenizer.get_vocab()  # type: ignore[attr-defined]
    return [word for word in vocabulary if any(word == t or word.startswith(f"{t}_") for t in tokens)]
