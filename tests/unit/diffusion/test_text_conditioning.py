"""`text_conditioning`: the SD3 combination of several encoders (against the lines of
`StableDiffusion3Pipeline.encode_prompt` written out on the same tensors), caption dropout row by
row, and the batching helpers."""

from __future__ import annotations

import torch

from lplkit.diffusion import text_conditioning as tc

B = 3


def _enc(g, tokens: int, width: int, pooled: int | None, real: list[int]):
    mask = torch.zeros(B, tokens, dtype=torch.bool)
    for i, n in enumerate(real):
        mask[i, :n] = True
    out = {"states": torch.randn(B, tokens, width, generator=g), "mask": mask}
    if pooled:
        out["pooled"] = torch.randn(B, pooled, generator=g)
    return out


def test_combine_is_sd3_encode_prompt_on_the_same_tensors():
    g = torch.Generator().manual_seed(0)
    clip_l = _enc(g, 5, 16, 12, [5, 3, 2])
    clip_g = _enc(g, 5, 8, 6, [4, 3, 1])
    t5 = _enc(g, 7, 40, None, [7, 2, 1])
    # the T5 encoder listed first: SD3 still puts the CLIP tokens first
    got = tc.combine([("t5", t5), ("clip", clip_l), ("clip", clip_g)])
    # StableDiffusion3Pipeline.encode_prompt, by hand:
    #   clip_prompt_embeds = torch.cat([prompt_embed, prompt_2_embed], dim=-1)
    #   clip_prompt_embeds = F.pad(clip_prompt_embeds, (0, t5.shape[-1] - clip_prompt_embeds.shape[-1]))
    #   prompt_embeds = torch.cat([clip_prompt_embeds, t5_prompt_embed], dim=-2)
    #   pooled_prompt_embeds = torch.cat([pooled_prompt_embed, pooled_prompt_2_embed], dim=-1)
    clip = torch.cat([clip_l["states"], clip_g["states"]], dim=-1)
    clip = torch.nn.functional.pad(clip, (0, 40 - 24))
    states = torch.cat([clip, t5["states"]], dim=-2)
    pooled = torch.cat([clip_l["pooled"], clip_g["pooled"]], dim=-1)
    assert torch.equal(got["states"], states) and got["states"].shape == (B, 12, 40)
    assert torch.equal(got["pooled"], pooled)
    # the mask (SD3 itself takes none): a CLIP token is real where either CLIP's is, then T5's
    want_mask = torch.cat([clip_l["mask"] | clip_g["mask"], t5["mask"]], dim=1)
    assert torch.equal(got["mask"].bool(), want_mask)
    assert tc.text_dims(got) == {"tokens": 12, "states_dim": 40, "pooled_dim": 18}


def test_one_encoder_is_passed_through_and_clip_order_is_kept():
    g = torch.Generator().manual_seed(1)
    a, b = _enc(g, 4, 6, 3, [4, 2, 1]), _enc(g, 4, 6, 5, [1, 1, 1])
    only = tc.combine([("clip", a)])
    assert all(torch.equal(only[k], a[k]) for k in a)
    ab, ba = tc.combine([("clip", a), ("clip", b)]), tc.combine([("clip", b), ("clip", a)])
    assert torch.equal(ab["states"], torch.cat([a["states"], b["states"]], dim=-1))
    assert torch.equal(ba["pooled"], torch.cat([b["pooled"], a["pooled"]], dim=-1))


def test_drop_captions_replaces_exactly_the_drawn_rows():
    g = torch.Generator().manual_seed(2)
    cond = _enc(g, 4, 6, 3, [4, 3, 2])
    empty = {k: v[:1].clone() * 0 + 7 for k, v in _enc(g, 4, 6, 3, [2, 2, 2]).items()}
    empty["mask"] = torch.tensor([[True, True, False, False]])
    drop = torch.tensor([False, True, False])
    got = tc.drop_captions(cond, empty, drop)
    for k in ("states", "mask", "pooled"):
        assert torch.equal(got[k][1], empty[k][0]), k
        assert torch.equal(got[k][[0, 2]], cond[k][[0, 2]]), k
    assert tc.expand(empty, 3)["states"].shape == (3, 4, 6)
    both = tc.concat([cond, tc.expand(empty, 3)])
    assert torch.equal(both["pooled"][3:], empty["pooled"].expand(3, 3))
