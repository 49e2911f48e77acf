"""Prompt adherence of a text-to-image model on OpenMoji names, by nearest training glyph.

Name family. A glyph name's family is the set of its content words:

    family(name) = { w in words(lower(name)) : len(w) > 1 and w not in GENERIC_WORDS }

where ``words`` are the maximal runs of letters a-z (so "hyphen-minus" gives hyphen, minus and
digits drop out). "cat face" and "grinning cat" share the family word "cat"; "tiger face" is
{tiger}. A prompt *qualifies* when its family shares a word with some training glyph's family
(the family exists in train); only its words that occur in train can ever be matched.

Adherence. For samples ``x_i`` generated from prompts ``p_i`` and training glyphs ``g_k`` with
names ``n_k`` (all images at the same size, uint8):

    nn(i)     = argmin_k || x_i - g_k ||_2                         (pixel L2)
    hit(i, p) = 1  if family(n_nn(i)) & family(p) != {}  else 0
    adherence = (1/N) sum_i hit(i, p_i)
    chance    = mean over pairs (i, j) with p_j != p_i of hit(i, p_j)

``chance`` is the adherence expected when the prompts are shuffled (the mean over all
re-assignments of another sample's prompt), measured on the same samples and neighbours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["GENERIC_WORDS", "adherence", "family", "nearest", "qualifying"]

#: Words shared by too many unrelated names to mark a family: the brief's generic words (face,
#: with, sign, symbol, black, white) and English function words.
GENERIC_WORDS = frozenset(
    {"face", "with", "sign", "symbol", "black", "white", "and", "of", "for", "in", "on", "the",
     "to", "or", "by", "an", "at"}
)  # fmt: skip


def family(name: str | None) -> frozenset[str]:
    """The content words of ``name`` (module doc); the empty set for None or ""."""
    words = re.findall(r"[a-z]+", (name or "").lower())
    return frozenset(w for w in words if len(w) > 1 and w not in GENERIC_WORDS)


def qualifying(prompts: Iterable[str], train_names: Iterable[str | None]) -> list[str]:
    """The prompts (in order, without repeats) whose family shares a word with a training name's."""
    vocab = frozenset().union(*(family(n) for n in train_names))
    return list(dict.fromkeys(p for p in prompts if family(p) & vocab))


def nearest(samples: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Index of each sample's nearest reference by pixel L2: ``(N,)`` int64.

    ``||x - g||^2 = ||x||^2 + ||g||^2 - 2 x.g`` in float64 (exact for uint8 images)."""
    x = samples.reshape(len(samples), -1).astype(np.float64)
    g = refs.reshape(len(refs), -1).astype(np.float64)
    d = (x * x).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * x @ g.T
    return np.argmin(d, axis=1).astype(np.int64)


def adherence(prompts: Sequence[str], neighbour_names: Sequence[str | None]) -> dict[str, Any]:
    """Adherence and shuffled-prompt chance (module doc) of samples whose prompts are ``prompts``
    and whose nearest training glyphs are named ``neighbour_names``, with their counts."""
    if len(prompts) != len(neighbour_names):
        raise ValueError(f"{len(prompts)} prompts but {len(neighbour_names)} neighbours")
    fam_p = [family(p) for p in prompts]
    fam_n = [family(n) for n in neighbour_names]
    hits = sum(bool(fp & fn) for fp, fn in zip(fam_p, fam_n, strict=True))
    pair_hits = pairs = 0
    for i, fn in enumerate(fam_n):
        for j, fp in enumerate(fam_p):
            if prompts[j] != prompts[i]:
                pairs += 1
                pair_hits += bool(fp & fn)
    n = len(prompts)
    return {
        "n": n,
        "hits": hits,
        "adherence": hits / n if n else None,
        "chance_pairs": pairs,
        "chance_hits": pair_hits,
        "chance": pair_hits / pairs if pairs else None,
    }
