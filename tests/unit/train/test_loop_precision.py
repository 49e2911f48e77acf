"""The trainer's gradient clipping (against `torch.nn.utils.clip_grad_norm_` applied by hand) and
its bf16 autocast (the denoiser in bf16, the diffusion loss in fp32: against float64)."""

from __future__ import annotations

import pytest
import torch
from helpers.standins import tiny_components

from lplkit.train.config import TrainConfig
from lplkit.train.loop import Trainer
from lplkit.train.losses import denoise, micro_batch_loss


def _cfg(clip: float) -> TrainConfig:
    cfg = TrainConfig(steps=2, batch_size=8, seed=3, grad_accum=2)
    cfg.optim.lr, cfg.optim.grad_clip = 1e-3, clip
    cfg.log.tensorboard = False
    return cfg


def _grads_at_optimizer_step(tmp_path, clip: float) -> dict[str, torch.Tensor]:
    """The gradients the optimizer sees at the first step (after accumulation and clipping)."""
    trainer = Trainer(_cfg(clip), tiny_components(objective="flow"), tmp_path / f"clip{clip}")
    seen: dict[str, torch.Tensor] = {}

    def before_step(optimizer, args, kwargs):
        for name, p in trainer.model.named_parameters():
            if p.grad is not None:
                seen[name] = p.grad.detach().clone()

    trainer.opt.register_step_pre_hook(before_step)
    trainer.train_step()
    return seen


def test_grad_clip_equals_clip_grad_norm_applied_by_hand(tmp_path):
    """Two accumulated micro-batches, then one global-norm clip of their summed gradient. A clip
    per micro-batch or per parameter, or a max_norm other than the configured one, fails."""
    raw = _grads_at_optimizer_step(tmp_path, 0.0)  # 0 disables clipping
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in raw.values()]))
    assert norm > 0
    max_norm = float(norm) * 0.3
    by_hand = {k: torch.nn.Parameter(torch.zeros_like(g)) for k, g in raw.items()}
    for k, p in by_hand.items():
        p.grad = raw[k].clone()
    torch.nn.utils.clip_grad_norm_(list(by_hand.values()), max_norm)
    clipped = _grads_at_optimizer_step(tmp_path, max_norm)
    assert clipped.keys() == raw.keys()
    for k, p in by_hand.items():
        torch.testing.assert_close(clipped[k], p.grad, rtol=1e-5, atol=1e-9, msg=k)
    # a max_norm above the norm leaves the gradient as it is
    loose = _grads_at_optimizer_step(tmp_path, float(norm) * 2)
    for k, g in raw.items():
        torch.testing.assert_close(loose[k], g, rtol=1e-6, atol=0, msg=k)


def test_bf16_runs_the_denoiser_in_bf16_and_the_loss_in_fp32():
    """The per-sample diffusion loss under `bf16=True` equals the float64 MSE of the same bf16
    model output (rtol 1e-5: fp32 reduction error ~1e-7; a loss computed in bf16 and cast at the
    end is off by ~1e-3 relative)."""
    parts = tiny_components(objective="flow")
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = micro_batch_loss(parts.model, parts.objective, z0, y, eps, t,
                           normalizer=parts.normalizer, bf16=True)  # fmt: skip
    assert got.total.dtype == got.diffusion.dtype == torch.float32
    z_t = (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * eps
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = denoise(parts.model, z_t, t * 1000, y)
    assert out.dtype == torch.bfloat16  # the denoiser really ran in bf16
    want = (out.double() - (eps - z0).double()).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(got.diffusion.double(), want, rtol=1e-5, atol=0)
    fp32 = micro_batch_loss(parts.model, parts.objective, z0, y, eps, t,
                            normalizer=parts.normalizer)  # fmt: skip
    assert not torch.allclose(fp32.diffusion, got.diffusion, rtol=1e-5, atol=0)  # bf16 was on
    assert got.diffusion == pytest.approx(fp32.diffusion, rel=0.05)
