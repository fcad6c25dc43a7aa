"""AUTOMATIC1111's prompt emphasis syntax, read exactly as A1111 reads it (torch-free, so the
protocol tells what a prompt asks for with the parser the engine encodes it with).

`(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.3)` x1.3, `\\(` `\\)` `\\[` `\\]` `\\\\`
literal characters, `BREAK` starts a new 75-token chunk. A bracket that is never closed weights
the rest of the prompt (A1111's rule); a closing bracket with no opener is a literal character.
No text is an error: every string parses.

Written here, not taken from a library: `compel` (2.5.1) reads its own syntax (`word++`,
`(word)1.3`) and blends weighted embeddings towards an empty prompt's instead of scaling them,
and `sd_embed` is not on the package index; neither gives A1111's numbers. This is A1111's
`modules/prompt_parser.py:parse_prompt_attention` rule for rule (its doctests are tests here).
"""

from __future__ import annotations

import re

BREAK = "BREAK"
BREAK_WEIGHT = -1.0  # the marker A1111 gives a BREAK in the parsed list
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:([+-]?[.\d]+)\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# What makes a prompt more than plain text: a bracket, an escape, or a BREAK.
_SYNTAX = re.compile(r"[()\[\]\\]|\bBREAK\b")

Parsed = list[tuple[str, float]]


def has_weight_syntax(text: str) -> bool:
    """Whether A1111 would read anything but plain text (weight 1 everywhere) in `text`."""
    return bool(_SYNTAX.search(text))


def parse_prompt_attention(text: str) -> Parsed:
    """The prompt as (text, weight) runs, as A1111's parser gives them; a BREAK is (BREAK, -1).

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    runs: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for run in runs[start:]:
            run[1] *= multiplier

    for match in _ATTENTION.finditer(text):
        part, weight = match.group(0), match.group(1)
        if part.startswith("\\"):
            runs.append([part[1:], 1.0])
        elif part == "(":
            round_brackets.append(len(runs))
        elif part == "[":
            square_brackets.append(len(runs))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), _number(weight))
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for index, piece in enumerate(_BREAK.split(part)):
                if index > 0:
                    runs.append([BREAK, BREAK_WEIGHT])
                runs.append([piece, 1.0])
    for start in round_brackets:
        multiply_range(start, ROUND_MULTIPLIER)
    for start in square_brackets:
        multiply_range(start, SQUARE_MULTIPLIER)
    if not runs:
        runs = [["", 1.0]]
    merged: list[list] = [runs[0]]
    for run in runs[1:]:  # runs of equal weight become one (as A1111 merges them)
        if run[1] == merged[-1][1]:
            merged[-1][0] += run[0]
        else:
            merged.append(run)
    return [(text_part, weight) for text_part, weight in merged]


def plain_text(text: str) -> str:
    """The prompt's words without the syntax: what a model whose encoder takes no weights reads
    (a BREAK becomes a space)."""
    return re.sub(r"\s{2,}", " ", "".join(" " if w == BREAK_WEIGHT else part for part, w in parse_prompt_attention(text))).strip()


def _number(text: str) -> float:
    """A weight as A1111's regex takes it (`[.\\d]+`, which lets through `1.2.3` or `.`): what
    Python's float cannot read counts as 1, where A1111 would fail the whole drawing."""
    try:
        value = float(text)
    except ValueError:
        return 1.0
    return value if value == value and abs(value) != float("inf") else 1.0
