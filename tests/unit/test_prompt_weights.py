"""A1111's emphasis syntax, read as A1111 reads it: its own doctests, and property tests that no
text breaks the parser or loses a word."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alice.engine.prompt_weights import BREAK, has_weight_syntax, parse_prompt_attention, plain_text


@pytest.mark.parametrize(("text", "parsed"), [  # modules/prompt_parser.py's doctests, as A1111 ships them
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
        ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
        (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
])
def test_a1111s_own_examples(text, parsed):
    assert parse_prompt_attention(text) == parsed


def test_weights_breaks_and_stray_brackets():
    assert parse_prompt_attention("[[dim]]") == [("dim", pytest.approx(1 / 1.21))]
    assert parse_prompt_attention("(x:1.0)") == [("x", 1.0)]
    assert parse_prompt_attention("a BREAK b") == [("a", 1.0), (BREAK, -1.0), ("b", 1.0)]
    assert parse_prompt_attention("close) only]") == [("close) only]", 1.0)]  # no opener: literal characters
    assert parse_prompt_attention("(x:1.2.3)") == [("x", 1.0)]  # A1111's regex takes it; float() cannot: weight 1
    assert parse_prompt_attention("(x: 1.3)") == [("x: 1.3", 1.1)]  # A1111 reads no space before the number
    assert parse_prompt_attention("") == [("", 1.0)]
    assert plain_text("(masterpiece:1.2), [blurry] BREAK a \\(cat\\)") == "masterpiece, blurry a (cat)"
    assert not has_weight_syntax("a plain prompt, with commas: and colons") and has_weight_syntax("(a)")


PROMPT_TEXT = st.lists(st.sampled_from(list("ab (:)[]\\.,1-") + [" BREAK ", "é", "🐱"]), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(PROMPT_TEXT)
def test_any_text_parses_into_its_words(text):
    parsed = parse_prompt_attention(text)
    assert parsed and all(isinstance(part, str) and isinstance(weight, float) for part, weight in parsed)
    words = "".join(part for part, weight in parsed if weight != -1.0)
    # Every letter survives (brackets, escapes and weights are the syntax's own characters).
    for letter in "abé🐱":
        assert words.count(letter) >= text.replace("BREAK", "").count(letter)
    assert isinstance(plain_text(text), str)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab ,.", min_size=1, max_size=30), st.integers(1, 4), st.floats(0.1, 3.0))
def test_nesting_multiplies(words, depth, weight):
    nested = "(" * depth + words + ")" * depth
    assert parse_prompt_attention(nested) == [(words, pytest.approx(1.1**depth))]
    assert parse_prompt_attention(f"({words}:{weight:.3f})") == [(words, pytest.approx(round(weight, 3)))]
    assert parse_prompt_attention("\\(" + words + "\\)") == [("(" + words + ")", 1.0)]
