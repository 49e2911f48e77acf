"""The name-family rule and the adherence figures of `lplkit.demo.adherence` against hand-computed
values: families written out by hand from the documented rule, nearest neighbours by a loop over
the references, adherence and chance counted by hand on a toy."""

from __future__ import annotations

import numpy as np
import pytest

from lplkit.demo.adherence import adherence, family, nearest, qualifying


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("cat face", {"cat"}),
        ("grinning cat", {"grinning", "cat"}),
        ("grinning cat face with smiling eyes", {"grinning", "cat", "smiling", "eyes"}),
        ("black chess pawn", {"chess", "pawn"}),
        ("hyphen-minus", {"hyphen", "minus"}),  # letter runs: the hyphen splits
        (
            "regional indicator symbol letter a",
            {"regional", "indicator", "letter"},
        ),  # "a": 1 letter
        ("squared cjk unified ideograph-7981", {"squared", "cjk", "unified", "ideograph"}),
        ("Peace Symbol", {"peace"}),  # lower-cased first
        ("", set()),
        (None, set()),
    ],
)
def test_family_by_hand(name, words) -> None:
    assert family(name) == frozenset(words)


def test_cat_names_share_a_family_and_a_qualifying_prompt_needs_train_words() -> None:
    assert family("cat face") & family("grinning cat") == {"cat"}
    train = ["grinning cat", "dog face", None, "white flag"]
    # "tiger face" -> {tiger}: no training name has it; "black flag" -> {flag} (white/black drop)
    assert qualifying(["cat face", "tiger face", "black flag", "cat face"], train) == [
        "cat face",
        "black flag",
    ]


def test_nearest_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    refs = rng.integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    refs[3] = samples[1]  # an exact copy must be its own nearest
    want = []
    for s in samples.astype(np.int64):
        d = [int(((s - r.astype(np.int64)) ** 2).sum()) for r in refs]
        want.append(d.index(min(d)))
    got = nearest(samples, refs)
    assert got.tolist() == want and got[1] == 3


def test_adherence_and_chance_on_a_toy() -> None:
    prompts = ["cat face", "dog", "red apple", "cat face"]
    neighbours = ["grinning cat", "pig face", "green apple", "dog face"]
    # hits by hand: cat/cat yes, dog/pig no, apple/apple yes, cat/dog no -> 2 of 4
    # chance: pairs (i, j) with prompt_j != prompt_i; neighbour i's family vs prompt j's family:
    # i=0 {grinning, cat}: j=1 dog no, j=2 apple no                      -> 0 of 2
    # i=1 {pig}: j=0 cat no, j=2 apple no, j=3 cat no                    -> 0 of 3
    # i=2 {green, apple}: j=0 no, j=1 no, j=3 no                         -> 0 of 3
    # i=3 {dog}: j=1 dog yes, j=2 apple no (j=0 has the same prompt)    -> 1 of 2
    got = adherence(prompts, neighbours)
    assert got == {"n": 4, "hits": 2, "adherence": 0.5, "chance_pairs": 10, "chance_hits": 1,
                   "chance": 0.1}  # fmt: skip


def test_adherence_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 neighbours"):
        adherence(["a b", "c d"], ["a b"])
