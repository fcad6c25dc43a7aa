"""A CLIP BPE tokenizer whose vocabulary is written by code, for the offline demo model.

Byte-level BPE covers every UTF-8 string with its 256 byte symbols, so accents, CJK and
emoji never become unknown tokens; a few merges keep common English short.
"""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

# A handful of merges for frequent words; any text still tokenizes without them.
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>")]


def _bytes_to_unicode() -> list[str]:
    """The printable stand-in for each byte, exactly as CLIP's (and GPT-2's) BPE uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    mapping = dict(zip(printable, chars))
    return [chr(mapping[byte]) for byte in range(256)]


def write_offline_clip_tokenizer(directory: Path, model_max_length: int = 77) -> None:
    """Write tokenizer files loadable by `CLIPTokenizer.from_pretrained(directory)`."""
    symbols = _bytes_to_unicode()
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(pair) for pair in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=list(_MERGES), model_max_length=model_max_length)
    tokenizer.save_pretrained(str(directory))
