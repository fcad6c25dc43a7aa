"""How much of a prompt a stored model will read, told before the queue: a prompt longer than
ALICE ever reads is refused (PromptTooLong, which names the limit), and what a model reads
differently from what was written (weights it ignores, tokens its CLIP encoder cuts) comes back
as notes, which the result carries.

- SD 1.x, 2.x, XL read A1111's syntax and long prompts in chunks (alice/engine/prompt_embeds.py),
  up to MAX_PROMPT_CHUNKS chunks of the encoder's length less start and end (75 for CLIP).
- The transformer families read the prompt's words without the syntax (no weights, no BREAK:
  applying weights to only their CLIP part would barely move them, since the T5 or LLM encoder
  is what conditions every token). Their T5 or LLM encoder reads `max_sequence_length` tokens,
  the default of the family's pipeline call (FLUX.1 512, SD 3 256): past it, refused. Their
  CLIP encoder (FLUX.1's pooled vector, SD 3's two) reads its first 75 tokens: past them, a note.

The tokenizers are read from the model's folder once per stored version (a path per version).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alice.engine.embeddings import named_in, spelled_out
from alice.engine.families import Family
from alice.engine.pipeline_configs import read_config
from alice.engine.prompt_embeds import chunk_length, token_chunks
from alice.engine.prompt_tags import extract_prompt_loras
from alice.engine.prompt_weights import has_weight_syntax, plain_text

# One CLIP token that is no comma (a comma moves the chunk's end): an embedding's vectors counted as these.
_ONE_TOKEN = "a"
MAX_PROMPT_CHUNKS = 8  # 600 tokens of CLIP: longer than any prompt CivitAI shows, and each chunk costs cross-attention
_TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


class PromptTooLong(ValueError):
    """A prompt past what the model reads; `field` is the request's field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class _Tokenizer:
    name: str
    tokenizer: Any
    is_clip: bool


@dataclass(frozen=True)
class NamedEmbedding:
    """A stored textual-inversion embedding a prompt names: its store's family label, the width
    of its vectors for each encoder, and how many vectors (tokens) it takes."""

    name: str
    family: str
    widths: tuple[int, ...]
    vectors: int


def read_prompts(
    folder: Path, family: Family, prompt: str, negative_prompt: str, embeddings: Sequence[NamedEmbedding] = (),
) -> tuple[str, ...]:
    """Notes on what the model reads differently from what was written (empty: all of it, as
    written); PromptTooLong for a prompt past what ALICE reads. `embeddings`: the stored ones the
    prompts name; each that fits the model counts its vectors, not its name's words, towards the
    limit (A1111 counts them so), and one of another family is said to be skipped."""
    notes: list[str] = []
    tokenizers = _tokenizers(str(folder))
    for field, text in (("prompt", extract_prompt_loras(prompt)[0]), ("negative_prompt", negative_prompt)):
        if not text:
            continue
        text = _embeddings_read(folder, family, field, text, embeddings, notes)
        if family.is_unet:
            _check_chunks(tokenizers, field, text)
            continue
        if has_weight_syntax(text):
            notes.append(f"{field}: weights, brackets and BREAK do not apply to {family.name} models; "
                         "read as the plain words")
            text = plain_text(text)
        notes.extend(_check_sequence(tokenizers, family, field, text))
    return tuple(notes)


def _embeddings_read(
    folder: Path, family: Family, field: str, text: str, embeddings: Sequence[NamedEmbedding], notes: list[str],
) -> str:
    """The text as the encoder will count it: an embedding the model loads written as one plain
    token per vector (the engine spells it as that many added tokens); one it skips noted, its name
    left as words (as the engine leaves it; A1111 skips those too)."""
    widths = _encoder_widths(str(folder)) if family.is_unet else ()
    for embedding in embeddings:
        if not named_in(text, embedding.name):
            continue
        if widths and embedding.widths == widths:
            text = spelled_out(text, embedding.name, " ".join([_ONE_TOKEN] * embedding.vectors))
            continue
        wide = " + ".join(str(width) for width in embedding.widths)
        model = (f"this model's text encoders are {' + '.join(str(width) for width in widths)} wide" if widths
                 else f"{family.name} models take no embeddings")
        notes.append(f"{field}: the embedding '{embedding.name}' is for {embedding.family} models (vectors {wide} "
                     f"wide) and {model}: skipped, its name read as words")
    return text


def _check_chunks(tokenizers: list[_Tokenizer], field: str, text: str) -> None:
    for entry in tokenizers[:1]:  # SDXL's two tokenizers share CLIP's vocabulary
        chunks = token_chunks(None, entry.tokenizer, text)
        if len(chunks) > MAX_PROMPT_CHUNKS:
            length = chunk_length(entry.tokenizer)
            tokens = sum(len(chunk.tokens) for chunk in chunks)
            raise PromptTooLong(
                field,
                f"{field} is {tokens} tokens in {len(chunks)} chunks; this model reads at most "
                f"{MAX_PROMPT_CHUNKS} chunks of {length} tokens ({MAX_PROMPT_CHUNKS * length} tokens)",
            )


def _check_sequence(tokenizers: list[_Tokenizer], family: Family, field: str, text: str) -> list[str]:
    notes = []
    for entry in tokenizers:
        count = len(entry.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])
        if entry.is_clip:
            limit = chunk_length(entry.tokenizer)
            if count > limit:
                notes.append(f"{field}: the CLIP text encoder read the first {limit} of its {count} tokens")
            continue
        limit = max_sequence_length(family)
        if limit is not None and count > limit:
            raise PromptTooLong(
                field, f"{field} is {count} tokens; {family.name} models read at most {limit} (max_sequence_length)"
            )
    return notes


def max_sequence_length(family: Family) -> int | None:
    """The family's pipeline's default `max_sequence_length`: how many tokens its T5 or LLM
    encoder reads (None: it takes no such argument)."""
    import diffusers

    parameter = inspect.signature(getattr(diffusers, family.text_to_image).__call__).parameters.get("max_sequence_length")
    return parameter.default if parameter is not None and isinstance(parameter.default, int) else None


@functools.lru_cache(maxsize=16)
def _encoder_widths(folder: str) -> tuple[int, ...]:
    """The widths of a UNet model's CLIP encoders' token embeddings (SDXL: both), from their configs."""
    configs = [read_config(Path(folder) / name / "config.json") for name in ("text_encoder", "text_encoder_2")]
    return tuple(int(config.get("hidden_size", 0)) for config in configs if config)


@functools.lru_cache(maxsize=16)
def _tokenizers(folder: str) -> list[_Tokenizer]:
    from transformers import AutoTokenizer

    found = []
    for name in _TOKENIZERS:
        path = Path(folder) / name
        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            found.append(_Tokenizer(name, tokenizer, "CLIP" in type(tokenizer).__name__))
    return found
