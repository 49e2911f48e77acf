"""SNR-weighted LPL (`lpl.snr_weighting = "min-snr"`): the reference trainer's `--lpl_scale` weights
(diffusers' `compute_snr` + Min-SNR-gamma), applied per sample to the gated LPL by the trainer."""

from __future__ import annotations

import pytest
import torch
from helpers.standins import CountingLpl, random_batch, small_config, tiny_components

from lplkit.diffusion.objectives import build_objective
from lplkit.train import loop
from lplkit.train.losses import micro_batch_loss


@pytest.mark.parametrize("kind", ["eps", "v"])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_weight_is_the_reference_trainers_lpl_scale_weight(kind, schedule):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    gamma = 5.0
    t = torch.tensor([0, 3, 40, 164, 165, 199, 500, 999])
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
    # train_sdxl_lpl.py, `if args.lpl_scale:` with `--snr_gamma`
    snr = compute_snr(sched, t)
    want = torch.stack([snr, gamma * torch.ones_like(t)], dim=1).min(dim=1)[0]
    want = want / snr if kind == "eps" else want / (snr + 1)
    obj = build_objective(kind, beta_schedule=schedule, num_train_timesteps=1000)
    torch.testing.assert_close(obj.min_snr_weight(t, gamma), want.float(), rtol=1e-5, atol=0)


def test_flow_weight_by_hand():
    obj = build_objective("flow")
    t = torch.tensor([0.0, 0.1, 0.5, 0.9])
    # SNR = ((1-t)/t)^2: inf, 81, 1, 1/81; weight min(SNR, 5) * t^2
    want = torch.tensor([0.0, 5 * 0.01, 1 * 0.25, (1 / 81) * 0.81])
    torch.testing.assert_close(obj.min_snr_weight(t, 5.0), want)


def test_micro_batch_lpl_is_weighted_per_sample():
    lpl = CountingLpl()
    parts = tiny_components(objective="eps", lpl=lpl)
    z0, eps = random_batch(4)
    t = torch.tensor([10, 100, 150, 700])
    gate = torch.tensor([True, True, False, True])
    w = torch.tensor([0.5, 2.0, 3.0, 0.25])
    kw = {"normalizer": parts.normalizer, "lpl": lpl, "lpl_weight": 0.7, "gate": gate}
    plain = micro_batch_loss(parts.model, parts.objective, z0, None, eps, t, **kw)
    got = micro_batch_loss(
        parts.model, parts.objective, z0, None, eps, t, **kw, lpl_sample_weight=w
    )
    torch.testing.assert_close(got.lpl, plain.lpl * w)
    lpl_term = lambda p: p.total - p.diffusion.mean()  # noqa: E731
    torch.testing.assert_close(lpl_term(got), 0.7 * (plain.lpl * w).sum() / 4, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weighting", ["none", "min-snr"])
def test_trainer_passes_the_min_snr_weights(tmp_path, monkeypatch, weighting):
    seen = []
    real = loop.micro_batch_loss

    def spy(model, objective, z0, labels, eps, t, **kw):
        seen.append((t.clone(), kw.get("lpl_sample_weight")))
        return real(model, objective, z0, labels, eps, t, **kw)

    monkeypatch.setattr(loop, "micro_batch_loss", spy)
    cfg = small_config(steps=1, batch_size=4)
    cfg.lpl.enabled, cfg.lpl.snr_min = True, None
    cfg.lpl.snr_weighting, cfg.lpl.snr_gamma = weighting, 2.0
    parts = tiny_components(objective="flow", lpl=CountingLpl())
    loop.Trainer(cfg, parts, tmp_path / "r").run()
    assert len(seen) == 1
    t, w = seen[0]
    if weighting == "none":
        assert w is None
    else:
        torch.testing.assert_close(w, build_objective("flow").min_snr_weight(t, 2.0))


def test_linear_ddpm_snr3_gate_is_t_up_to_164():
    """docs/results.md: the linear DDPM SNR >= 3 gate keeps t <= 164 (diffusers' schedule as oracle)."""
    from diffusers import DDPMScheduler

    abar = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    kept = ((abar / (1 - abar)) >= 3).nonzero().flatten()
    assert kept.tolist() == list(range(165))
    t = torch.arange(1000)
    gate = build_objective("eps", beta_schedule="linear").gate(t, snr_min=3.0)
    assert t[gate].tolist() == kept.tolist()
