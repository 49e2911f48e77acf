"""DecoderTaps: features equal the decoder's own modules run by hand, in the right order."""

from __future__ import annotations

import pytest
import torch
from helpers.models import make_tiny_vae
from torch import nn

from lplkit.errors import AutoencoderError, ConfigError
from lplkit.lpl.decoder_taps import DecoderTaps, FeatureStats, LayerInfo


def make_tiny_dc(seed: int = 0):
    """A tiny AutoencoderDC (3 stages, the deepest with linear attention), f=4, 4 latent channels."""
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    types = ("ResBlock", "ResBlock", "EfficientViTBlock")
    return AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types=types,
        decoder_block_types=types,
        encoder_block_out_channels=(8, 16, 32),
        decoder_block_out_channels=(8, 16, 32),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)),
        decoder_qkv_multiscales=((), (), (5,)),
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
    ).eval()


def make_sd_layout_vae(latent_channels: int = 4, post_quant_conv: bool = True):
    """SD/SDXL (pqc, 4 ch) or SD3/FLUX (no pqc, 16 ch) layout: 4 up blocks, f=8, tiny widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        use_quant_conv=post_quant_conv,
        use_post_quant_conv=post_quant_conv,
    ).eval()


def manual_kl_features(vae, z, depth, *, pqc: bool):
    """The decoder's modules called one by one, as AutoencoderKL.decode would run them."""
    dec = vae.decoder
    h = vae.post_quant_conv(z) if pqc else z
    h = dec.conv_in(h)
    feats = [dec.mid_block(h, None)]
    for block in dec.up_blocks[:depth]:
        feats.append(block(feats[-1], None))
    return feats


def kl_decode_tail(vae, feature):
    dec = vae.decoder
    return dec.conv_out(dec.conv_act(dec.conv_norm_out(feature)))


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(0)


@pytest.fixture(scope="module")
def z():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))


def test_kl_taps_equal_manual_modules_with_post_quant_conv(vae, z):
    taps = DecoderTaps(vae, 3)
    with torch.no_grad():
        got = taps(z)
        want = manual_kl_features(vae, z, 3, pqc=True)
        image = vae.decode(z).sample
    assert len(got) == 4
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    # The deepest tap followed by the decoder's own tail is exactly vae.decode: order + pqc are right.
    with torch.no_grad():
        torch.testing.assert_close(kl_decode_tail(vae, got[-1]), image, rtol=1e-6, atol=1e-6)


def test_kl_taps_can_skip_post_quant_conv_like_the_reference(vae, z):
    taps = DecoderTaps(vae, 2, apply_post_quant_conv=False)
    with torch.no_grad():
        got = taps(z)
        want = manual_kl_features(vae, z, 2, pqc=False)
        with_pqc = DecoderTaps(vae, 2)(z)
    assert taps.has_post_quant_conv and taps.post_quant_conv is None
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert not torch.allclose(got[0], with_pqc[0])


def test_kl_without_post_quant_conv():
    vae = make_tiny_vae(0, post_quant_conv=False)
    z = torch.randn(1, 4, 8, 8)
    taps = DecoderTaps(vae)
    assert not taps.has_post_quant_conv
    with torch.no_grad():
        got = taps(z)
        want = manual_kl_features(vae, z, 3, pqc=False)
        torch.testing.assert_close(kl_decode_tail(vae, got[-1]), vae.decode(z).sample)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_layers_describe_tiny_vae_by_hand(vae, z):
    taps = DecoderTaps(vae)
    assert taps.max_depth == 3 and taps.decoder_upsample_factor == 4
    assert taps.layers == [
        LayerInfo("mid_block", 16, 1),
        LayerInfo("up_blocks.0", 16, 2),
        LayerInfo("up_blocks.1", 16, 4),
        LayerInfo("up_blocks.2", 8, 4),
    ]
    with torch.no_grad():
        feats = taps(z)
    for f, info in zip(feats, taps.layers, strict=True):
        assert f.shape == (2, info.channels, 8 * info.upsample_factor, 8 * info.upsample_factor)


@pytest.mark.parametrize(("latent_channels", "pqc"), [(4, True), (16, False)], ids=["sd", "flux"])
def test_sd_and_flux_layouts(latent_channels, pqc):
    vae = make_sd_layout_vae(latent_channels, pqc)
    taps = DecoderTaps(vae)
    # SD-VAE pattern (512@h, 512@2h, 512@4h, 256@8h, 128@8h) with block_out_channels (8,16,32,32).
    assert [(i.channels, i.upsample_factor) for i in taps.layers] == [
        (32, 1),
        (32, 2),
        (32, 4),
        (16, 8),
        (8, 8),
    ]
    z = torch.randn(1, latent_channels, 4, 4)
    with torch.no_grad():
        feats = taps(z)
        torch.testing.assert_close(kl_decode_tail(vae, feats[-1]), vae.decode(z).sample)


def test_dc_taps_run_stages_in_reverse_index_order():
    vae = make_tiny_dc()
    dec = vae.decoder
    z = torch.randn(2, 4, 8, 8)
    taps = DecoderTaps(vae)
    assert taps.layers == [
        LayerInfo("up_blocks.2", 32, 1),
        LayerInfo("up_blocks.1", 16, 2),
        LayerInfo("up_blocks.0", 8, 4),
    ]
    with torch.no_grad():
        got = taps(z)
        h = dec.conv_in(z) + z.repeat_interleave(32 // 4, dim=1)
        f0 = dec.up_blocks[2](h)
        f1 = dec.up_blocks[1](f0)
        f2 = dec.up_blocks[0](f1)
        tail = dec.norm_out(got[-1].movedim(1, -1)).movedim(-1, 1)
        image = dec.conv_out(dec.conv_act(tail))
        torch.testing.assert_close(image, vae.decode(z).sample)
    for g, w in zip(got, [f0, f1, f2], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert len(DecoderTaps(vae, 1)(z)) == 2


def test_gradient_checkpointing_gives_same_features_and_grads(vae, z):
    plain, ckpt = DecoderTaps(vae, 3), DecoderTaps(vae, 3, grad_checkpointing=True)
    grads = []
    for taps in (plain, ckpt):
        zz = z.clone().requires_grad_()
        feats = taps(zz)
        sum(f.square().mean() for f in feats).backward()
        grads.append(zz.grad)
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("depth,pqc", [(3, True), (1, False)])
def test_tapped_modules_are_frozen_and_the_rest_untouched(z, depth, pqc):
    vae = make_tiny_vae(0)
    vae.train()
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    taps = DecoderTaps(vae, depth, apply_post_quant_conv=pqc)
    taps.train()
    used = [vae.decoder.conv_in, vae.decoder.mid_block, *vae.decoder.up_blocks[:depth]]
    used += [vae.post_quant_conv] if pqc else []
    used_ids = {id(p) for m in used for p in m.parameters()}
    assert all(not p.requires_grad for m in used for p in m.parameters())
    assert not any(m.training for m in taps.modules())
    # what the loss never runs keeps its state: the encoder, unused stages, the output layers
    rest = [p for p in vae.parameters() if id(p) not in used_ids]
    assert rest and all(p.requires_grad for p in rest)
    assert vae.encoder.training and vae.decoder.conv_out.training
    zz = z.clone().requires_grad_()
    sum(f.sum() for f in taps(zz)).backward()
    assert all(p.grad is None for p in vae.parameters())
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_unsupported_autoencoder_and_bad_depth(vae):
    with pytest.raises(AutoencoderError, match="Linear"):
        DecoderTaps(nn.Linear(2, 2), 1)
    with pytest.raises(ConfigError, match=r"0\.\.3"):
        DecoderTaps(vae, 4)


def test_bf16_vae_with_fp32_latents_and_upcast_mid_block():
    vae = make_tiny_vae(0).to(torch.bfloat16)
    vae.decoder.mid_block.to(torch.float32)  # the "upcast" pattern of SDXL pipelines
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        feats = DecoderTaps(vae)(z)
    assert feats[0].dtype == torch.float32 and feats[-1].dtype == torch.bfloat16
    assert all(torch.isfinite(f.float()).all() for f in feats)


def test_feature_stats_shape_check():
    ok = FeatureStats(*(torch.zeros(3) for _ in range(4)))
    ok.check(3, "0")
    with pytest.raises(ConfigError, match=r"feature_stats\[mid_block\]\.std"):
        FeatureStats(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3)).check(
            3, "mid_block"
        )
