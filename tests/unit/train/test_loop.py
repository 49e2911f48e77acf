"""The training loop: loss composition, LPL gating, resume exactness, accumulation, NaN guard."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.standins import CountingLpl, MemoryStore, random_batch, small_config, tiny_components

from lplkit.errors import ConfigError
from lplkit.train.config import TrainConfig
from lplkit.train.loop import Trainer
from lplkit.train.losses import micro_batch_loss
from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics
from lplkit.train.normalization import LatentNormalizer


def test_flow_loss_without_lpl_is_the_plain_objective():
    parts = tiny_components(objective="flow")
    z0, eps = random_batch()
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    got = micro_batch_loss(parts.model, parts.objective, z0, y, eps, t, normalizer=parts.normalizer)
    # oracle: rectified flow written out here
    z_t = (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * eps
    out = parts.model(z_t, t * 1000, y)
    per = ((out - (eps - z0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got.diffusion, per.detach())
    torch.testing.assert_close(got.total, per.mean())
    assert not got.gated.any() and (got.lpl == 0).all()


def test_eps_loss_matches_diffusers_scheduler():
    from diffusers import DDPMScheduler

    parts = tiny_components(objective="eps")
    z0, eps = random_batch()
    t = torch.tensor([0, 10, 200, 500, 800, 999])
    got = micro_batch_loss(
        parts.model, parts.objective, z0, None, eps, t, normalizer=parts.normalizer
    )
    z_t = DDPMScheduler(num_train_timesteps=1000).add_noise(z0, eps, t)
    per = ((parts.model(z_t, t, None) - eps) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got.total, per.mean())


@pytest.mark.parametrize("max_t", [0, 300, 1000])
def test_decoder_sees_exactly_the_gated_samples(max_t):
    lpl = CountingLpl()
    parts = tiny_components(objective="eps", lpl=lpl)
    z0, eps = random_batch(8)
    t = torch.tensor([5, 50, 150, 250, 350, 600, 900, 999])
    gate = parts.objective.gate(t, max_timestep=max_t)
    n = int((t < max_t).sum())
    got = micro_batch_loss(parts.model, parts.objective, z0, None, eps, t, normalizer=parts.normalizer,
                           lpl=lpl, lpl_weight=0.7, gate=gate)  # fmt: skip
    assert lpl.rows == 2 * n  # prediction + target of each gated sample, nothing else
    assert got.gated.sum().item() == n and (got.lpl[~gate] == 0).all()
    plain = micro_batch_loss(
        parts.model, parts.objective, z0, None, eps, t, normalizer=parts.normalizer
    )
    if n == 0:  # empty gate = exactly the plain loss, and no decoder work
        assert torch.equal(got.total, plain.total)
        return
    # oracle for the LPL term: z0_hat from the eps formula, unnormalized by hand, mean over B
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)[t].view(-1, 1, 1, 1)
    z_t = abar.sqrt() * z0 + (1 - abar).sqrt() * eps
    z0_hat = (z_t - (1 - abar).sqrt() * parts.model(z_t, t, None)) / abar.sqrt()
    raw = lambda z: z / 0.5 + 0.1  # noqa: E731 - the stand-in normalizer: shift 0.1, scale 0.5
    term = lpl(raw(z0_hat[gate]), raw(z0[gate])).sum() / 8
    torch.testing.assert_close(got.total, plain.total + 0.7 * term, rtol=1e-5, atol=1e-6)


def test_lpl_gradient_reaches_model_only():
    lpl = CountingLpl()
    parts = tiny_components(objective="flow", lpl=lpl)
    z0, eps = random_batch(4)
    t = torch.full((4,), 0.1)
    gate = torch.ones(4, dtype=torch.bool)
    out = micro_batch_loss(parts.model, parts.objective, z0, None, eps, t, normalizer=parts.normalizer,
                           lpl=lpl, gate=gate)  # fmt: skip
    out.total.backward()
    assert all(p.grad is None for p in lpl.vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts.model.parameters())


def _final_state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}, {
        k: v.clone() for k, v in trainer.ema.weights().items()
    }


def _losses(run_dir):
    return [
        {k: v for k, v in r.items() if k not in TIMING_FIELDS}
        for r in read_metrics(run_dir / "metrics.jsonl")
    ]


@pytest.mark.parametrize("accum,lpl", [(1, False), (2, True)])
def test_interrupted_then_resumed_is_bitwise_identical(tmp_path, accum, lpl):
    def cfg():
        c = small_config(steps=10, grad_accum=accum)
        c.lpl.enabled = lpl
        c.lpl.snr_min = 1.0
        c.log.every = 3  # not a divisor of ckpt.every: the log window spans the checkpoint
        return c

    def parts():
        return tiny_components(objective="flow", lpl=CountingLpl() if lpl else None)

    ref = Trainer(cfg(), parts(), tmp_path / "ref")
    ref.run()
    ref_model, ref_ema = _final_state(ref)

    class Killed(Exception):
        pass

    def die(step):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):
        Trainer(cfg(), parts(), tmp_path / "run", on_step=die).run()
    resumed = Trainer(cfg(), parts(), tmp_path / "run")
    result = resumed.run()
    assert result.resumed_from == 4
    model, ema = _final_state(resumed)
    for k in ref_model:
        assert torch.equal(model[k], ref_model[k]), k
        assert torch.equal(ema[k], ref_ema[k]), k
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    assert [r["step"] for r in _losses(tmp_path / "ref")] == [3, 6, 9, 10]
    if lpl:
        assert 0 < _losses(tmp_path / "ref")[-1]["gate_frac"] < 1


class CropRecorder:
    """The real LPL on 4x4 crops of the 8x8 latents; records the crop draws it is given."""

    def __init__(self):
        from helpers.models import make_tiny_vae

        from lplkit.lpl.loss import LatentPerceptualLoss

        self.lpl = LatentPerceptualLoss(make_tiny_vae(0), depth=1, crop=4)
        self.seen: list[torch.Tensor] = []

    def __call__(self, pred_raw, target_raw, crop_u=None):
        self.seen.append(crop_u.clone())
        return self.lpl.forward_gathered(pred_raw, target_raw, crop_u=crop_u)


def _crop_cfg(**kw) -> TrainConfig:
    from lplkit.lpl.config import resolve_lpl_config

    c = small_config(**kw)
    c.lpl.enabled, c.lpl.snr_min = True, 1.0
    c.lpl.loss = resolve_lpl_config("paper", depth=1, crop=4)
    return c


def test_lpl_crops_resume_exactly(tmp_path):
    """Crop windows come from the per-step seeded stream: a killed and resumed run sees the same
    windows and ends bitwise equal to the uninterrupted one."""
    ref_lpl = CropRecorder()
    ref = Trainer(_crop_cfg(steps=8), tiny_components(lpl=ref_lpl), tmp_path / "ref")
    ref.run()

    class Killed(Exception):
        pass

    def die(step):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        Trainer(_crop_cfg(steps=8), tiny_components(lpl=CropRecorder()), tmp_path / "run",
                on_step=die).run()  # fmt: skip
    lpl = CropRecorder()
    resumed = Trainer(_crop_cfg(steps=8), tiny_components(lpl=lpl), tmp_path / "run")
    assert resumed.run().resumed_from == 4
    assert len(lpl.seen) == 4 and len(ref_lpl.seen) == 8  # one gated micro-batch per step
    for a, b in zip(ref_lpl.seen[4:], lpl.seen, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ref_lpl.seen[0], ref_lpl.seen[1])  # fresh windows every step
    ref_model, _ = _final_state(ref)
    model, _ = _final_state(resumed)
    for k in ref_model:
        assert torch.equal(model[k], ref_model[k]), k


# opt.step is replaced below, which torch notices at the scheduler step
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step:UserWarning")
def test_lpl_crops_do_not_depend_on_the_accumulation_split(tmp_path):
    """The draws are made for the global batch and sliced like t and eps: 2 micro-batches of 4
    get the same windows, hence the same gradients, as one batch of 8."""
    grads, seen = [], []
    for accum in (1, 2):
        rec = CropRecorder()
        tr = Trainer(_crop_cfg(steps=2, grad_accum=accum), tiny_components(lpl=rec),
                     tmp_path / f"a{accum}")  # fmt: skip
        got = []
        tr.opt.step = lambda got=got, tr=tr: got.append(  # type: ignore[method-assign]
            [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]
        )
        tr.run()
        grads.append(got)
        seen.append(rec.seen)
    assert torch.equal(torch.cat(seen[0]), torch.cat(seen[1]))
    for g1, g2 in zip(grads[0], grads[1], strict=True):
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# opt.step is replaced below, which torch notices at the scheduler step
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step:UserWarning")
def test_grad_accumulation_matches_one_big_batch(tmp_path):
    # Compare the gradients handed to the optimizer (Adam's sign-like first steps would amplify
    # float-rounding differences of near-zero gradients in the weights).
    grads = []
    for accum in (1, 2):
        tr = Trainer(
            small_config(steps=2, grad_accum=accum), tiny_components(), tmp_path / f"a{accum}"
        )
        seen = []
        tr.opt.step = lambda seen=seen, tr=tr: seen.append(  # type: ignore[method-assign]
            [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]
        )
        tr.run()
        grads.append(seen)
    assert len(grads[0]) == len(grads[1]) == 2
    for g1, g2 in zip(grads[0], grads[1], strict=True):
        for a, b in zip(g1, g2, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_nan_guard_skips_and_counts(tmp_path):
    store = MemoryStore()
    store.mean[5] = float("nan")  # 16 samples, batch 8: the NaN sample is in one batch per epoch
    tr = Trainer(small_config(steps=4), tiny_components(store), tmp_path)
    result = tr.run()
    assert result.nan_skips == 2
    assert all(torch.isfinite(v).all() for v in tr.model.state_dict().values())
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert all(math.isfinite(r["loss"]) for r in recs)


def test_tiny_model_overfits_16_samples(tmp_path):
    cfg = small_config(steps=80, batch_size=16)
    cfg.optim.lr = 3e-3
    cfg.model.label_dropout = 0.0
    cfg.log.every = 10
    cfg.ckpt.every = 1000
    Trainer(cfg, tiny_components(objective="eps"), tmp_path).run()
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert losses[-1] < 0.5 * losses[0], losses


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig(batch_size=10, grad_accum=3).validate()
    with pytest.raises(ConfigError, match="world_size"):
        TrainConfig(batch_size=8).per_rank_micro_batch(3)
    cfg = TrainConfig()
    cfg.objective.kind = "flow"
    cfg.lpl.max_timestep = 200
    with pytest.raises(ConfigError, match="DDPM"):
        cfg.validate()


def test_normalizer_roundtrip():
    n = LatentNormalizer.from_stats([0.5, -1.0], [2.0, 4.0])
    z = torch.randn(3, 2, 4, 4)
    torch.testing.assert_close(n.normalize(z)[:, 1], (z[:, 1] + 1.0) / 4.0)
    torch.testing.assert_close(n.unnormalize(n.normalize(z)), z)
