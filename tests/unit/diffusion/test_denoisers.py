"""Denoiser registry: DiT sizes vs the DiT paper, conditioning, label dropout, saving."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel
from safetensors.torch import load_file, save_file

from lplkit.diffusion.denoisers import Denoiser, build_model, list_models, register_model
from lplkit.errors import ConfigError

# Peebles & Xie 2023, Table 4 "Params (M)" (256x256 images = 32x32x4 latents)
PAPER_PARAMS_M = {"DiT-S/2": 33.0, "DiT-B/2": 130.0, "DiT-L/2": 458.0, "DiT-XL/2": 675.0}


def _counts(model: Denoiser) -> tuple[int, int]:
    """(all parameters, parameters with the per-block conditioning embedders counted once)."""
    total = sum(p.numel() for p in model.parameters())
    blocks = model.net.transformer_blocks
    per_block = sum(p.numel() for p in blocks[0].norm1.emb.parameters())
    return total, total - (len(blocks) - 1) * per_block


@pytest.mark.parametrize("name", list(PAPER_PARAMS_M))
def test_dit_parameter_counts_match_paper(name):
    with torch.device("meta"):
        model = build_model(name, in_channels=4, sample_size=32, num_classes=1000)
    total, shared = _counts(model)
    assert shared / 1e6 == pytest.approx(PAPER_PARAMS_M[name], rel=0.01)
    assert total > shared  # diffusers keeps one embedder per block (documented)
    cfg = model.net.config
    assert cfg.out_channels == 4 and cfg.patch_size == 2
    # 1000 classes + the null row
    assert model.net.transformer_blocks[
        0
    ].norm1.emb.class_embedder.embedding_table.num_embeddings == (1001)


def test_patch_sizes_change_token_count_not_depth():
    with torch.device("meta"):
        m2 = build_model("DiT-B/2", in_channels=4, sample_size=32, num_classes=None)
        m8 = build_model("DiT-B/8", in_channels=4, sample_size=32, num_classes=None)
    assert m2.net.pos_embed.pos_embed.shape[1] == 16 * 16
    assert m8.net.pos_embed.pos_embed.shape[1] == 4 * 4
    assert len(m8.net.transformer_blocks) == 12
    assert m8.net.proj_out_2.out_features == 8 * 8 * 4


def test_registry_lists_all_sizes():
    names = list_models()
    for size in ("S", "B", "L", "XL"):
        for patch in (2, 4, 8):
            assert f"DiT-{size}/{patch}" in names
    assert "DiT-T/2" in names


def test_forward_equals_direct_diffusers_call():
    torch.manual_seed(0)
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=10).eval()
    _randomize_zero_init(model)
    z = torch.randn(3, 4, 8, 8)
    t = torch.tensor([5, 500, 999])
    y = torch.tensor([0, 9, 10])
    out = model(z, t, y)
    assert out.shape == z.shape
    ref = model.net(z, timestep=t, class_labels=y).sample
    torch.testing.assert_close(out, ref)
    # labels=None means the null class; a scalar timestep is broadcast
    torch.testing.assert_close(
        model(z, torch.tensor(7), None), model(z, torch.full((3,), 7), y * 0 + 10)
    )
    assert not torch.allclose(model(z, t, y * 0), model(z, t, y * 0 + 1))


def _randomize_zero_init(model: Denoiser) -> None:
    """adaLN-Zero makes a fresh DiT's output 0; give the zero-init layers weights so outputs differ."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def test_unconditional_model_ignores_labels_and_is_deterministic_in_train_mode():
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=None)
    _randomize_zero_init(model)
    assert not model.conditional and model.null_class_id == 1
    model.train()
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    torch.manual_seed(1)
    a = model(z, t, None)
    torch.manual_seed(2)
    b = model(z, t, torch.tensor([0, 0]))
    torch.testing.assert_close(a, b)


def test_no_hidden_label_dropout_in_train_mode():
    """diffusers' LabelEmbedding would drop 10% of labels with the global RNG; we switch it off."""
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3).train()
    _randomize_zero_init(model)
    z = torch.randn(64, 4, 8, 8)
    t = torch.full((64,), 10)
    y = torch.zeros(64, dtype=torch.long)
    torch.manual_seed(0)
    a = model(z, t, y)
    torch.manual_seed(123)
    torch.testing.assert_close(a, model(z, t, y))


def test_state_dict_roundtrip_through_safetensors(tmp_path):
    a = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3)
    _randomize_zero_init(a)
    save_file(a.state_dict(), tmp_path / "m.safetensors")
    torch.manual_seed(99)
    b = build_model(**{k: v for k, v in a.spec.items() if k != "name"}, name=a.spec["name"])
    b.load_state_dict(load_file(tmp_path / "m.safetensors"))
    z, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 4]), torch.tensor([0, 2])
    torch.testing.assert_close(a.eval()(z, t, y), b.eval()(z, t, y), rtol=0, atol=0)
    assert isinstance(b.net, DiTTransformer2DModel)


def test_unet_entry_and_registry_errors():
    unet = build_model("UNet-T", in_channels=4, sample_size=8, num_classes=2)
    out = unet(torch.randn(2, 4, 8, 8), torch.tensor([1, 900]), torch.tensor([0, 2]))
    assert out.shape == (2, 4, 8, 8)
    with pytest.raises(ConfigError, match="DiT-XL/2"):
        build_model("DiT-XXL/2", in_channels=4, sample_size=32)
    with pytest.raises(ConfigError, match="divisible"):
        build_model("DiT-T/2", in_channels=4, sample_size=7)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=0)
    with pytest.raises(ConfigError, match="already registered"):
        register_model("DiT-T/2")(lambda **kw: None)
