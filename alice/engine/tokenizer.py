"""A CLIP BPE tokenizer whose vocabulary is written by code, for the offline demo model.

Byte-level BPE covers every UTF-8 string with its 256 byte symbols, so accents, CJK and
emoji never become unknown tokens. Merges are learned, the way BPE learns them, from a
short word list, so each listed word is one token: the demo model's words (colours, shapes,
places) then each get an embedding of their own.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# Frequent English words that are single tokens in every version of this tokenizer.
COMMON_WORDS = ("a", "the", "and", "in", "on", "of")
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


def learn_merges(words: Iterable[str], *, word_end: str = "</w>") -> list[tuple[str, str]]:
    """BPE training on a word list until every word is one symbol.

    Merging the most frequent adjacent pair first (ties by first appearance, so the result
    is the same every time) gives merges that the tokenizer, applying them by rank, replays
    exactly: each word ends as a single token, whatever other words share its letters.
    `word_end` marks a word's last symbol (CLIP's `</w>`; byte-level BPEs such as Qwen's mark
    none: pass "", and the words are not lowercased).
    """
    byte_symbols = _bytes_to_unicode()
    spelled = []
    for word in dict.fromkeys(w.lower() if word_end else w for w in words):
        symbols = [byte_symbols[b] for b in word.encode("utf-8")]
        symbols[-1] += word_end
        spelled.append(symbols)
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for symbols in spelled for pair in zip(symbols, symbols[1:]))
        if not pairs:
            return merges
        best = max(pairs, key=lambda pair: pairs[pair])  # max keeps the first of equal counts
        merges.append(best)
        for symbols in spelled:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [symbols[i] + symbols[i + 1]]
                i += 1


def _vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = _bytes_to_unicode()
    tokens = [*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(pair) for pair in merges), *_SPECIAL]
    return {token: index for index, token in enumerate(dict.fromkeys(tokens))}


def write_offline_clip_tokenizer(
    directory: Path, model_max_length: int = 77, whole_words: Iterable[str] = COMMON_WORDS
) -> None:
    """Write tokenizer files loadable by `CLIPTokenizer.from_pretrained(directory)`.

    `whole_words` each become a single token. The classic vocab.json/merges.txt pair is
    written too: tools that convert original checkpoints and older loaders read those,
    transformers 5 reads tokenizer.json.
    """
    from transformers import CLIPTokenizer  # imported here: see alice/engine/__init__.py

    directory.mkdir(parents=True, exist_ok=True)
    merges = learn_merges(whole_words)
    (directory / "vocab.json").write_text(json.dumps(_vocabulary(merges), ensure_ascii=False), encoding="utf-8")
    lines = "".join(f"{left} {right}\n" for left, right in merges)
    (directory / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(directory), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(directory))
