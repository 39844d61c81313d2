"""Generation mode: batched greedy decoding and reading the chosen option."""

from __future__ import annotations

import pytest
from _tiny import tiny_model, tiny_tokenizer

from cem.evaluation.generate import extract_choice, generate_texts

CHOICES = ["Thimphu", "Paro", "Niger", "Nigeria"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("The answer is B", 1),
        ("the answer is (C).", 2),
        ("B", 1),
        ("(B)", 1),
        ("B.", 1),
        (" D\n", 3),
        ("Answer: B) Paro", 1),
        ("Answer: **A**", 0),
        ("The correct option is D because...", 3),
        ("It is Thimphu, of course.", 0),
        ("thimphu", 0),
        ("I think Niger, not Nigeria.", 2),
        ("Nigeria", 3),  # "Niger" must not match inside "Nigeria"
        ("Surely (C) here", 2),
        ("Answer: E", None),  # no fifth option
        ("A capital city is not listed.", None),  # "A" as an article is not a letter
        ("No idea.", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_choice(text, CHOICES) == expected


def test_extract_choice_prefers_the_longest_option_at_the_same_place():
    assert extract_choice("New York City, surely", ["New York", "New York City", "Boston"]) == 1


PROMPTS = ["Hello", "The capital of France is a city called", "Q: 2+2?\nA:"]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def test_generate_batched_equals_one_by_one(model):
    tok = tiny_tokenizer()
    side = tok.padding_side
    one = generate_texts(model, tok, PROMPTS, max_new_tokens=5, batch_size=1)
    many = generate_texts(model, tok, PROMPTS, max_new_tokens=5, batch_size=3)
    assert one == many
    assert all(isinstance(t, str) and t for t in one)
    assert tok.padding_side == side  # restored


def test_generate_keeps_input_order(model):
    tok = tiny_tokenizer()
    forward = generate_texts(model, tok, PROMPTS, max_new_tokens=4, batch_size=2)
    backward = generate_texts(model, tok, PROMPTS[::-1], max_new_tokens=4, batch_size=2)
    assert forward == backward[::-1]
