"""load_autoencoder / autoencoder_info / encode_moments against direct diffusers calls."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lplkit.autoencoders import loading as ae
from lplkit.autoencoders.loading import (
    autoencoder_info,
    default_autoencoder,
    encode_moments,
    load_autoencoder,
)
from lplkit.errors import AutoencoderError


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_load_is_frozen_eval(tiny_vae_dir):
    vae = load_autoencoder(str(tiny_vae_dir))
    assert type(vae).__name__ == "AutoencoderKL"
    assert not vae.training
    assert not any(p.requires_grad for p in vae.parameters())


def test_moments_equal_direct_encode(tiny_vae_dir):
    from diffusers import AutoencoderKL

    vae = load_autoencoder(str(tiny_vae_dir))
    x = _images()
    mean, std = encode_moments(vae, x)
    ref = AutoencoderKL.from_pretrained(tiny_vae_dir).eval()
    with torch.no_grad():
        params = ref.quant_conv(ref.encoder(x))  # mean, logvar stacked on channels
    ref_mean, ref_logvar = params.chunk(2, dim=1)
    assert mean.dtype == torch.float32 and mean.shape == (2, 4, 8, 8)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(std, torch.exp(0.5 * ref_logvar.clamp(-30, 20)))


def test_info(tiny_vae_dir, other_vae_dir):
    vae = load_autoencoder(str(tiny_vae_dir))
    info = autoencoder_info(vae, str(tiny_vae_dir))
    cfg = json.loads((tiny_vae_dir / "config.json").read_text())
    public = {k: v for k, v in cfg.items() if not k.startswith("_")}
    expected_hash = hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()
    assert info == {
        "id": str(tiny_vae_dir.resolve()),
        "subfolder": None,
        "revision": None,  # a local directory has no hub commit
        "class": "AutoencoderKL",
        "config_hash": expected_hash,
        "weights_hash": info["weights_hash"],
        "scaling_factor": 0.5,
        "shift_factor": 0.0,
        "latent_channels": 4,
        "downsample_factor": 4,
    }
    json.dumps(info)  # serializable
    other = autoencoder_info(load_autoencoder(str(other_vae_dir)), str(other_vae_dir))
    assert other["config_hash"] == info["config_hash"]  # same architecture...
    assert other["weights_hash"] != info["weights_hash"]  # ...different weights


def test_subfolder_and_missing_config(tmp_path, tiny_vae_dir):
    import shutil

    shutil.copytree(tiny_vae_dir, tmp_path / "pipe" / "vae")
    vae = load_autoencoder(str(tmp_path / "pipe"), subfolder="vae")
    assert autoencoder_info(vae, str(tmp_path / "pipe"), "vae")["subfolder"] == "vae"
    with pytest.raises(AutoencoderError, match="pass --vae-subfolder vae"):
        load_autoencoder(str(tmp_path / "pipe"))


def test_dc_ae_is_deterministic(tmp_path):
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    dc = AutoencoderDC(
        latent_channels=4,
        attention_head_dim=4,
        encoder_block_types="ResBlock",
        decoder_block_types="ResBlock",
        encoder_block_out_channels=(8, 16),
        decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), ()),
        decoder_qkv_multiscales=((), ()),
        scaling_factor=0.3,
    ).eval()
    dc.save_pretrained(tmp_path / "dc")
    vae = load_autoencoder(str(tmp_path / "dc"))
    x = _images(size=16)
    mean, std = encode_moments(vae, x)
    with torch.no_grad():
        ref = dc.encode(x).latent
    torch.testing.assert_close(mean, ref)
    assert torch.count_nonzero(std) == 0
    info = autoencoder_info(vae, str(tmp_path / "dc"))
    assert info["class"] == "AutoencoderDC" and info["downsample_factor"] == 2
    assert info["scaling_factor"] == pytest.approx(0.3) and info["shift_factor"] == 0.0


def test_unsupported_class_is_refused(tmp_path):
    from diffusers import AutoencoderTiny

    AutoencoderTiny(
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        num_encoder_blocks=(1, 1),
        num_decoder_blocks=(1, 1),
        latent_channels=4,
    ).save_pretrained(tmp_path / "taesd")
    with pytest.raises(AutoencoderError, match="'AutoencoderTiny' is not supported"):
        load_autoencoder(str(tmp_path / "taesd"))


def test_bundled_names(monkeypatch):
    default = default_autoencoder()
    assert default is None or default in ae.BUNDLED_AUTOENCODERS
    monkeypatch.setitem(ae.BUNDLED_AUTOENCODERS, "ghost", "autoencoders/ghost")
    with pytest.raises(AutoencoderError, match="bundled autoencoder 'ghost' is missing"):
        load_autoencoder("ghost")
    assert ae.resolve_spec("not-bundled/x") == "not-bundled/x"


def test_shift_factor_recorded(tmp_path):
    from helpers.models import make_tiny_vae

    vae = make_tiny_vae(0)
    vae.register_to_config(shift_factor=0.1159)
    vae.save_pretrained(tmp_path / "flux-like")
    info = autoencoder_info(load_autoencoder(str(tmp_path / "flux-like")), "x")
    assert info["shift_factor"] == pytest.approx(0.1159)
