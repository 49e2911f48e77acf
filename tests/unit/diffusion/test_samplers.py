"""Samplers vs diffusers' DDIMScheduler / FlowMatchEulerDiscreteScheduler and an exact Gaussian ODE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from lplkit.diffusion.denoisers import build_model
from lplkit.diffusion.image_files import make_grid, save_grid, save_npz, to_uint8
from lplkit.diffusion.objectives import DDPMObjective, FlowMatchingObjective
from lplkit.diffusion.samplers import ddim_timesteps, sample
from lplkit.errors import ConfigError

SHAPE = (2, 3, 4, 4)


def fake_model(z: torch.Tensor, t: torch.Tensor, _labels=None) -> torch.Tensor:
    """A fixed nonlinear function of (z, t): any 'prediction' works for step-by-step parity."""
    tt = t.float().reshape(-1, 1, 1, 1)
    return 0.6 * z + 0.2 * torch.sin(tt / 150.0 + z)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50])
@pytest.mark.parametrize("offset", [0, 1])
def test_ddim_timesteps_match_diffusers(spacing, steps, offset):
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(steps)
    ours = ddim_timesteps(1000, steps, spacing, offset if spacing == "leading" else 0)
    assert torch.equal(ours, ref.timesteps)


def _ddim_reference(prediction, schedule, steps, spacing, offset, set_alpha_to_one, noise):
    ref = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule=schedule,
        prediction_type="epsilon" if prediction == "eps" else "v_prediction",
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    ref.set_timesteps(steps)
    z = noise.clone()
    for t in ref.timesteps:
        z = ref.step(fake_model(z, t.expand(z.shape[0])), t, z, eta=0.0).prev_sample
    return z


@pytest.mark.parametrize(
    ("prediction", "schedule", "steps", "spacing", "offset", "alpha_one"),
    [
        ("eps", "linear", 10, "leading", 0, True),
        ("eps", "scaled_linear", 7, "leading", 1, False),
        ("v", "squaredcos_cap_v2", 10, "leading", 0, True),
        ("v", "linear", 20, "trailing", 0, False),
        ("eps", "squaredcos_cap_v2", 25, "trailing", 0, True),
    ],
)
def test_ddim_matches_diffusers_step_by_step(
    prediction, schedule, steps, spacing, offset, alpha_one
):
    obj = DDPMObjective(prediction, schedule)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    expected = _ddim_reference(prediction, schedule, steps, spacing, offset, alpha_one, noise)
    got = sample(
        fake_model,
        obj,
        SHAPE,
        steps=steps,
        noise=noise,
        timestep_spacing=spacing,
        steps_offset=offset,
        set_alpha_to_one=alpha_one,
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_euler_matches_diffusers_flow_match_euler():
    steps = 8
    sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    ref.set_timesteps(sigmas=sigmas.tolist())
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    z = noise.clone()
    for t in ref.timesteps:  # diffusers timesteps = 1000 * sigma, our model_timestep convention
        z = ref.step(fake_model(z, t.expand(z.shape[0])), t, z).prev_sample
    got = sample(
        fake_model, FlowMatchingObjective(), SHAPE, steps=steps, noise=noise, sampler="euler"
    )
    torch.testing.assert_close(got, z, rtol=1e-5, atol=1e-5)


# Gaussian data z0 ~ N(mu, s^2) per coordinate: with z_t = (1-t) z0 + t eps the marginal is
# N((1-t) mu, r_t^2), r_t^2 = (1-t)^2 s^2 + t^2, and the exact velocity field E[eps - z0 | z_t] is
#   v(z, t) = -mu + (t - (1-t) s^2) / r_t^2 * (z - (1-t) mu);
# its ODE maps z_1 = eps to z_0 = mu + s * eps exactly.
MU, S = 0.7, 0.3


def gaussian_velocity(z: torch.Tensor, model_t: torch.Tensor, _labels=None) -> torch.Tensor:
    t = (model_t.double() / 1000.0).reshape(-1, 1, 1, 1)
    r2 = (1 - t) ** 2 * S**2 + t**2
    return (-MU + (t - (1 - t) * S**2) / r2 * (z.double() - (1 - t) * MU)).float()


def _ode_error(sampler: str, steps: int) -> float:
    noise = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(3))
    z0 = sample(
        gaussian_velocity,
        FlowMatchingObjective(),
        noise.shape,
        steps=steps,
        noise=noise,
        sampler=sampler,
    )
    return (z0 - (MU + S * noise)).abs().max().item()


def test_flow_ode_solvers_converge_to_exact_gaussian_map():
    e_euler = [_ode_error("euler", n) for n in (20, 40)]
    e_heun = [_ode_error("heun", n) for n in (20, 40)]
    assert e_heun[1] < 1e-3 and e_euler[1] < 0.05
    assert e_heun[1] < e_euler[1] / 10
    # first order: halving h halves the error; second order (Heun): divides it by four
    assert 1.6 < e_euler[0] / e_euler[1] < 2.4
    assert 3.2 < e_heun[0] / e_heun[1] < 4.8


def _tiny_dit(num_classes=4):
    model = build_model("DiT-T/2", in_channels=3, sample_size=4, num_classes=num_classes).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adaLN-Zero outputs 0 at init: give every layer weights
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.parametrize("objective", [DDPMObjective("v"), FlowMatchingObjective()])
def test_cfg_one_is_conditional_and_w_combines_cond_and_uncond(objective):
    model = _tiny_dit()
    y = torch.tensor([1, 3])
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))

    def cond_only(z, t, _labels):
        return model(z, t, y)

    kw = {"steps": 3, "noise": noise}
    torch.testing.assert_close(
        sample(model, objective, SHAPE, labels=y, guidance=1.0, **kw),
        sample(cond_only, objective, SHAPE, **kw),
    )

    def guided_by_hand(z, t, _labels, w=3.0):
        cond = model(z, t, y)
        uncond = model(z, t, torch.full_like(y, model.null_class_id))
        return uncond + w * (cond - uncond)

    got = sample(model, objective, SHAPE, labels=y, guidance=3.0, **kw)
    torch.testing.assert_close(
        got, sample(guided_by_hand, objective, SHAPE, **kw), rtol=1e-5, atol=1e-5
    )
    plain = sample(cond_only, objective, SHAPE, **kw)
    assert not torch.allclose(got, plain, atol=1e-3)


@pytest.mark.parametrize("objective", [DDPMObjective("eps"), FlowMatchingObjective()])
def test_sampling_is_deterministic_given_the_generator(objective):
    model = _tiny_dit()
    y = torch.tensor([0, 2])

    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return sample(model, objective, SHAPE, labels=y, steps=4, guidance=2.0, generator=gen)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sampler_objective_mismatch_and_bad_args():
    with pytest.raises(ConfigError, match="flow"):
        sample(fake_model, DDPMObjective(), SHAPE, sampler="heun")
    with pytest.raises(ConfigError, match="DDPM"):
        sample(fake_model, FlowMatchingObjective(), SHAPE, sampler="ddim")
    with pytest.raises(ConfigError, match="null_class_id"):
        sample(
            fake_model, FlowMatchingObjective(), SHAPE, labels=torch.tensor([0, 1]), guidance=2.0
        )
    with pytest.raises(ConfigError, match="steps"):
        sample(fake_model, DDPMObjective(), SHAPE, steps=0)
    with pytest.raises(ConfigError, match="outside"):
        ddim_timesteps(1000, 1000, "leading", steps_offset=1)
    with pytest.raises(ConfigError, match="spacing"):
        ddim_timesteps(1000, 10, "karras")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="noise shape"):
        sample(fake_model, DDPMObjective(), SHAPE, noise=torch.zeros(1, 3, 4, 4))


def test_callback_counts_steps():
    seen = []
    sample(
        fake_model,
        FlowMatchingObjective(),
        SHAPE,
        steps=5,
        callback=lambda i, n: seen.append((i, n)),
    )
    assert seen == [(i, 5) for i in range(1, 6)]


def test_to_uint8_by_hand():
    x = torch.tensor([-1.0, -2.0, 0.0, 1.0, 3.0, 1 / 127.5 - 1, 0.999]).reshape(1, 1, 1, 7)
    u = to_uint8(x)
    assert u.dtype == np.uint8 and u.shape == (1, 1, 7, 1)
    expected = [0, 0, 128, 255, 255, 1, round(127.5 * 1.999)]
    assert u.ravel().tolist() == expected


def test_make_grid_layout_by_hand():
    imgs = np.stack([np.full((2, 3, 3), k * 10, dtype=np.uint8) for k in range(1, 6)])
    grid = make_grid(imgs, nrow=3, padding=1)
    # 2 rows x 3 cols of 2x3 tiles with 1-pixel borders
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    assert (grid[1:3, 1:4] == 10).all() and (grid[1:3, 9:12] == 30).all()
    assert (grid[4:6, 5:8] == 50).all() and (grid[4:6, 9:12] == 0).all()
    assert (grid[0] == 0).all() and (grid[:, 4] == 0).all()


def test_save_npz_and_grid_roundtrip(tmp_path):
    imgs = torch.rand(5, 3, 6, 4) * 2 - 1
    npz = save_npz(imgs, tmp_path / "samples.npz")
    with np.load(npz) as f:
        assert list(f.keys()) == ["arr_0"]
        arr = f["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 6, 4, 3)
    np.testing.assert_array_equal(arr, to_uint8(imgs))
    png = save_grid(imgs, tmp_path / "sub" / "grid.png", nrow=2)
    with Image.open(png) as im:
        assert im.size == (2 * 4 + 3 * 2, 3 * 6 + 4 * 2)
        np.testing.assert_array_equal(np.asarray(im), make_grid(imgs, nrow=2))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["grid.png", "samples.npz", "sub"]
    with pytest.raises(ConfigError, match="uint8"):
        save_npz(np.zeros((2, 4, 4, 3), dtype=np.float32), tmp_path / "bad.npz")


def test_ddim_single_step_returns_z0_hat():
    """With one step and alpha_bar -> 1 the output is predict_z0 at t = 0 (leading spacing)."""
    obj = DDPMObjective("eps")
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    got = sample(fake_model, obj, SHAPE, steps=1, noise=noise)
    abar0 = obj.alphas_cumprod[0].item()
    expected = (noise - math.sqrt(1 - abar0) * fake_model(noise, torch.zeros(2))) / math.sqrt(abar0)
    torch.testing.assert_close(got, expected)
