"""A CLIP BPE tokenizer whose vocabulary is written by code, for the offline demo model.

Byte-level BPE covers every UTF-8 string with its 256 byte symbols, so accents, CJK and
emoji never become unknown tokens; a few merges keep common English short.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

# A handful of merges for frequent words; any text still tokenizes without them.
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>")]
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _bytes_to_unicode() -> list[str]:
    """The printable stand-in for each byte, exactly as CLIP's (and GPT-2's) BPE uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: byte for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:  # control bytes and space map past 255, as in CLIP
            mapping[byte] = 256 + extra
            extra += 1
    return [chr(mapping[byte]) for byte in range(256)]


def _vocabulary() -> dict[str, int]:
    symbols = _bytes_to_unicode()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(pair) for pair in _MERGES), *_SPECIAL]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def write_offline_clip_tokenizer(directory: Path, model_max_length: int = 77) -> None:
    """Write tokenizer files loadable by `CLIPTokenizer.from_pretrained(directory)`.

    The classic vocab.json/merges.txt pair is written too: tools that convert original
    checkpoints and older loaders read those, transformers 5 reads tokenizer.json.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(_vocabulary(), ensure_ascii=False), encoding="utf-8")
    merges = "".join(f"{left} {right}\n" for left, right in _MERGES)
    (directory / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(directory), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(directory))
