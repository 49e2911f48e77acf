"""Objectives vs diffusers' DDPMScheduler / FlowMatchEulerDiscreteScheduler and closed forms."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_snr

from lplkit.diffusion.objectives import (
    DDPMObjective,
    FlowMatchingObjective,
    build_objective,
    ddpm_alphas_cumprod,
    snr_gate,
)
from lplkit.errors import ConfigError

SCHEDULES = ["linear", "scaled_linear", "squaredcos_cap_v2"]
# (beta_start, beta_end): diffusers defaults, and Stable Diffusion's for scaled_linear
BETAS = {
    "linear": (0.0001, 0.02),
    "scaled_linear": (0.00085, 0.012),
    "squaredcos_cap_v2": (0.0001, 0.02),
}


def _pair(schedule: str, prediction: str = "eps"):
    b0, b1 = BETAS[schedule]
    ours = DDPMObjective(prediction, schedule, 1000, b0, b1)
    ref = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule=schedule,
        beta_start=b0,
        beta_end=b1,
        prediction_type="epsilon" if prediction == "eps" else "v_prediction",
        clip_sample=False,
    )
    return ours, ref


def _batch(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z0 = torch.randn(6, 4, 5, 5, generator=g, dtype=dtype)
    eps = torch.randn(6, 4, 5, 5, generator=g, dtype=dtype)
    t = torch.tensor([0, 1, 199, 500, 998, 999])
    return z0, eps, t


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_alphas_cumprod_bitwise_equal_to_diffusers(schedule):
    ours, ref = _pair(schedule)
    assert torch.equal(ours.alphas_cumprod, ref.alphas_cumprod)


def test_alphas_cumprod_unknown_schedule():
    with pytest.raises(ConfigError, match="laplace"):
        ddpm_alphas_cumprod("laplace")  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_add_noise_and_velocity_match_diffusers(schedule):
    z0, eps, t = _batch()
    ours, ref = _pair(schedule, "v")
    torch.testing.assert_close(ours.add_noise(z0, eps, t), ref.add_noise(z0, eps, t))
    torch.testing.assert_close(ours.target(z0, eps, t), ref.get_velocity(z0, eps, t))
    eps_obj, _ = _pair(schedule, "eps")
    assert torch.equal(eps_obj.target(z0, eps, t), eps)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_predict_z0_matches_diffusers_step(schedule, prediction):
    """diffusers' DDPMScheduler.step returns pred_original_sample: the same recovery formula."""
    ours, ref = _pair(schedule, prediction)
    g = torch.Generator().manual_seed(1)
    z_t = torch.randn(1, 4, 5, 5, generator=g)
    out = torch.randn(1, 4, 5, 5, generator=g)
    ref.set_timesteps(1000)
    for t in (999, 500, 120, 3):
        expected = ref.step(out, t, z_t, generator=g).pred_original_sample
        got = ours.predict_z0(z_t, torch.tensor([t]), out)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_predict_z0_recovers_z0_from_true_target(schedule, prediction):
    z0, eps, t = _batch(dtype=torch.float64)
    ours, _ = _pair(schedule, prediction)
    z_t = ours.add_noise(z0, eps, t)
    torch.testing.assert_close(ours.predict_z0(z_t, t, ours.target(z0, eps, t)), z0)
    torch.testing.assert_close(ours.predict_eps(z_t, t, ours.target(z0, eps, t)), eps)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ddpm_snr_matches_diffusers_compute_snr(schedule):
    ours, ref = _pair(schedule)
    t = torch.arange(0, 1000, 37)
    torch.testing.assert_close(ours.snr(t), compute_snr(ref, t))
    # closed form at one point, by hand from the betas
    b0, b1 = BETAS[schedule]
    if schedule == "linear":
        abar = math.prod(1 - (b0 + (b1 - b0) * i / 999) for i in range(200))
        assert ours.snr(torch.tensor([199])).item() == pytest.approx(abar / (1 - abar), rel=1e-4)


def test_ddpm_timesteps_and_model_timestep():
    obj = DDPMObjective("eps")
    g = torch.Generator().manual_seed(0)
    t = obj.sample_timesteps(4096, g)
    assert t.dtype == torch.int64 and t.min() >= 0 and t.max() <= 999
    assert len(t.unique()) > 900  # uniform over all 1000 values
    assert torch.equal(t, obj.sample_timesteps(4096, torch.Generator().manual_seed(0)))
    assert torch.equal(obj.model_timestep(t), t)


def test_ddpm_gate_snr_and_max_timestep():
    obj = DDPMObjective("eps", "scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 150, 199, 200, 201, 800])
    assert obj.gate(t, max_timestep=200).tolist() == [True, True, True, False, False, False]
    snr = obj.snr(t)
    thr = float(snr[3])  # exactly SNR(200)
    assert obj.gate(t, snr_min=thr).tolist() == [True, True, True, True, False, False]
    assert obj.gate(t).all()
    both = obj.gate(t, snr_min=float(snr[1]), max_timestep=200)
    assert both.tolist() == [True, True, False, False, False, False]


def test_snr_gate_is_inclusive_threshold():
    snr = torch.tensor([0.5, 1.0, 3.0, float("inf")])
    assert snr_gate(snr, 1.0).tolist() == [False, True, True, True]


def test_loss_is_per_sample_mse_by_hand():
    out = torch.zeros(2, 1, 2, 2)
    tgt = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 2.0]]]])
    loss = DDPMObjective().loss(out, tgt)
    assert loss.shape == (2,)
    assert loss.tolist() == pytest.approx([(1 + 4 + 9 + 16) / 4, 4 / 4])
    assert DDPMObjective().loss(out.bfloat16(), tgt).dtype == torch.float32


def test_compute_bundles_everything():
    obj = DDPMObjective("v", "squaredcos_cap_v2")
    z0, eps, t = _batch()
    s = obj.compute(z0, eps, t)
    assert torch.equal(s.z_t, obj.add_noise(z0, eps, t))
    assert torch.equal(s.target, obj.target(z0, eps, t))
    assert torch.equal(s.snr, obj.snr(t)) and torch.equal(s.model_t, t) and s.t is t


def test_flow_add_noise_matches_diffusers_scale_noise():
    """FlowMatchEulerDiscreteScheduler.scale_noise: sigma * noise + (1 - sigma) * sample."""
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    ref.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    obj = FlowMatchingObjective()
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g)
    for step_t in ref.timesteps:
        sigma = float(step_t) / 1000
        expected = ref.scale_noise(z0, step_t.reshape(1), eps)
        torch.testing.assert_close(obj.add_noise(z0, eps, torch.tensor([sigma])), expected)


def test_flow_target_recovery_snr_closed_forms():
    obj = FlowMatchingObjective()
    g = torch.Generator().manual_seed(2)
    z0 = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5, 0.9], dtype=torch.float64)
    z_t = obj.add_noise(z0, eps, t)
    torch.testing.assert_close(z_t[2], 0.5 * z0[2] + 0.5 * eps[2])
    assert torch.equal(z_t[0], z0[0])
    v = obj.target(z0, eps, t)
    torch.testing.assert_close(v, eps - z0)
    torch.testing.assert_close(obj.predict_z0(z_t, t, v), z0)
    snr = obj.snr(torch.tensor([0.0, 0.2, 0.5, 0.9]))
    assert snr[0] == float("inf")
    assert snr[1:].tolist() == pytest.approx([16.0, 1.0, 1 / 81])
    assert obj.model_timestep(torch.tensor([0.25])).tolist() == [250.0]
    assert obj.gate(torch.tensor([0.1, 0.5, 0.6]), snr_min=1.0).tolist() == [True, True, False]
    with pytest.raises(ConfigError, match="DDPM"):
        obj.gate(t, max_timestep=200)


def test_flow_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    t = FlowMatchingObjective().sample_timesteps(20000, g)
    assert t.dtype == torch.float32 and t.min() >= 0 and t.max() < 1
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    ln = FlowMatchingObjective("logit-normal", logit_mean=0.5, logit_std=0.8)
    t = ln.sample_timesteps(20000, torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.5, abs=0.03)
    assert logit.std().item() == pytest.approx(0.8, abs=0.03)
    again = ln.sample_timesteps(20000, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)


def test_build_objective_and_errors():
    assert isinstance(build_objective("flow", time_sampling="logit-normal"), FlowMatchingObjective)
    v = build_objective("v", beta_schedule="scaled_linear")
    assert isinstance(v, DDPMObjective) and v.prediction == "v" and v.name == "v"
    for obj in (v, FlowMatchingObjective("logit-normal", 0.3, 1.2)):
        again = build_objective(**json.loads(json.dumps(obj.spec)))
        assert type(again) is type(obj) and again.spec == obj.spec
    assert torch.equal(build_objective(**v.spec).alphas_cumprod, v.alphas_cumprod)
    with pytest.raises(ConfigError, match="beta_schedule"):
        build_objective("flow", beta_schedule="linear")
    with pytest.raises(ConfigError, match="eps, v or flow"):
        build_objective("x0")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        DDPMObjective("sample")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        FlowMatchingObjective("beta")  # type: ignore[arg-type]
