"""Samplers (DDIM for DDPM eps/v, Euler and Heun ODE for flow matching) with classifier-free guidance.

Images to files (uint8, grids, ``.npz``) are `lplkit.diffusion.image_files`.

Classifier-free guidance (Ho & Salimans 2022), applied to the model output ``f`` (eps, v or velocity,
all affine in the score at a fixed t, so guiding any of them is the same):

    f_cfg = f(z, t, null) + w (f(z, t, y) - f(z, t, null))

computed in one forward on the batch ``[z; z]`` with labels ``[y; null]``; ``w = 1`` is plain
conditional sampling (one forward). A text model's null is the empty caption's condition: the
batch ``[z; z]`` gets the text ``[c; empty]`` (`lplkit.diffusion.text_conditioning`), as diffusers'
pipelines concatenate ``[negative; positive]`` prompt embeddings.

DDIM, eta = 0 (Song et al. 2021), on timesteps ``t_0 > t_1 > ... > t_{S-1}``:

    z0_hat = predict_z0(z_t, t, f),  eps_hat = predict_eps(z_t, t, f)
    z_{t'} = sqrt(alpha_bar_{t'}) z0_hat + sqrt(1 - alpha_bar_{t'}) eps_hat

with ``t'`` the next timestep and, after the last one, ``alpha_bar = 1`` (diffusers
``set_alpha_to_one=True``: the final output is ``z0_hat``; ``False`` uses ``alpha_bar_0``).
Timestep spacing follows diffusers' ``DDIMScheduler``: ``leading`` (default),
``trailing``, ``linspace``. lplkit steps to the actual next timestep of the schedule; diffusers
steps to ``t - T // S``, which is the same for ``leading`` and for ``trailing`` when S divides T.

Flow matching ODE ``dz/dt = v(z, t)`` integrated from t = 1 (noise) to t = 0 on the uniform grid
``t_i = 1 - i / S``: Euler ``z <- z + (t_{i+1} - t_i) v(z, t_i)`` (S evaluations); Heun (explicit
trapezoid) ``z_e = z + h v(z, t_i)``, ``z <- z + h/2 (v(z, t_i) + v(z_e, t_{i+1}))`` (2 S evaluations).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lplkit.diffusion.objectives import DDPMObjective, FlowMatchingObjective, Objective
from lplkit.errors import ConfigError

Sampler = Literal["ddim", "euler", "heun"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
DenoiserFn = Callable[[Tensor, Tensor, Tensor | None], Tensor]

__all__ = [
    "ddim_timesteps",
    "flow_time_grid",
    "guided",
    "sample",
]


def ddim_timesteps(
    num_train_timesteps: int,
    steps: int,
    spacing: TimestepSpacing = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """Descending int64 timesteps exactly as diffusers ``DDIMScheduler.set_timesteps``."""
    T = num_train_timesteps
    if not 1 <= steps <= T:
        raise ConfigError(f"steps must be in [1, {T}], got {steps}")
    if spacing == "leading":
        ts = (np.arange(0, steps) * (T // steps)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, steps).round()[::-1].astype(np.int64)
    else:
        raise ConfigError(
            f"unknown timestep spacing {spacing!r}; use leading, trailing or linspace"
        )
    if ts.max() >= T or ts.min() < 0:
        raise ConfigError(
            f"{steps} {spacing} steps with steps_offset={steps_offset} reach timestep "
            f"{int(ts.max())} outside [0, {T}); lower the steps or the offset"
        )
    return torch.from_numpy(ts.copy())


def flow_time_grid(steps: int) -> Tensor:
    """``t_i = 1 - i / S`` for ``i = 0..S`` (float64 on CPU; the ODE runs from noise to data)."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def guided(
    denoiser: DenoiserFn,
    labels: Tensor | None,
    guidance: float,
    text: dict[str, Tensor] | None = None,
    null_text: dict[str, Tensor] | None = None,
) -> DenoiserFn:
    """Wrap ``denoiser`` so it returns the classifier-free-guided output (see module docstring).

    ``guidance == 1`` or ``labels is None`` returns the plain (conditional / unconditional) denoiser.
    The null label is ``denoiser.null_class_id``. With ``text`` (a text model's batch condition)
    the null is ``null_text`` (the empty caption's condition, batch 1 or B).
    """
    if text is not None:
        return _text_guided(denoiser, text, guidance, null_text)
    if labels is None or guidance == 1.0:
        return lambda z, t, _y: denoiser(z, t, labels)
    null_id = getattr(denoiser, "null_class_id", None)
    if null_id is None:
        raise ConfigError("classifier-free guidance needs a denoiser with a null_class_id")
    y2 = torch.cat([labels, torch.full_like(labels, null_id)])

    def fn(z: Tensor, t: Tensor, _y: Tensor | None) -> Tensor:
        out = denoiser(torch.cat([z, z]), torch.cat([t, t]), y2)
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return fn


def _text_guided(
    denoiser: Callable[..., Tensor],
    text: dict[str, Tensor],
    guidance: float,
    null_text: dict[str, Tensor] | None,
) -> DenoiserFn:
    if guidance == 1.0:
        return lambda z, t, _y: denoiser(z, t, None, text)
    if null_text is None:
        raise ConfigError("classifier-free guidance of a text model needs the empty caption's text")
    batch = int(text["states"].shape[0])
    null = {k: v.to(text[k].device).expand(batch, *v.shape[1:]) for k, v in null_text.items()}
    both = {k: torch.cat([text[k], null[k].to(text[k].dtype)]) for k in text}

    def fn(z: Tensor, t: Tensor, _y: Tensor | None) -> Tensor:
        out = denoiser(torch.cat([z, z]), torch.cat([t, t]), None, both)
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return fn


@torch.no_grad()
def sample(
    denoiser: DenoiserFn,
    objective: Objective,
    shape: tuple[int, ...],
    *,
    labels: Tensor | None = None,
    text: dict[str, Tensor] | None = None,
    null_text: dict[str, Tensor] | None = None,
    steps: int = 50,
    guidance: float = 1.0,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    device: torch.device | str | None = None,
    timestep_spacing: TimestepSpacing = "leading",
    steps_offset: int = 0,
    set_alpha_to_one: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Generate clean latents ``z0`` of ``shape`` (B, C, H, W), float32.

    Args:
        denoiser: ``(z_t, model_timestep, labels) -> prediction`` (e.g. :class:`lplkit.diffusion.denoisers.Denoiser`).
        objective: the objective the denoiser was trained with.
        shape: output shape; ``shape[0]`` is the batch.
        labels: ``(B,)`` class ids, or ``None`` (unconditional).
        text: a text model's condition ``{states, mask[, pooled]}`` with B rows (then ``labels``
            is unused); ``null_text``: the empty caption's (batch 1), needed when ``guidance != 1``.
        steps: sampler steps (DDIM: model evaluations; Euler: S; Heun: 2 S evaluations).
        guidance: classifier-free guidance weight ``w`` (the CLI's ``--cfg`` / ``--guidance``).
        sampler: ``ddim`` (DDPM objectives, default) or ``euler`` / ``heun`` (flow; default ``heun``).
        generator: seeds the initial noise ``z_1 ~ N(0, I)`` (drawn on the generator's device).
        noise: explicit initial noise instead of drawing it.
        device: where to run (default: ``noise``'s device, else the denoiser's, else CPU).
        timestep_spacing, steps_offset, set_alpha_to_one: DDIM options as diffusers' ``DDIMScheduler``.
        callback: ``callback(i, total)`` after each step (progress bars).
    """
    if device is None:
        if noise is not None:
            device = noise.device
        elif isinstance(denoiser, torch.nn.Module):
            device = next(denoiser.parameters()).device
        else:
            device = "cpu"
    if noise is None:
        gdev = generator.device if generator is not None else device
        noise = torch.randn(shape, generator=generator, device=gdev)
    elif tuple(noise.shape) != tuple(shape):
        raise ConfigError(f"noise shape {tuple(noise.shape)} does not match {tuple(shape)}")
    z = noise.to(device=device, dtype=torch.float32)
    if labels is not None:
        labels = labels.to(device)
    if text is not None:
        text = {k: v.to(device) for k, v in text.items()}
    fn = guided(denoiser, labels, guidance, text, null_text)

    if isinstance(objective, DDPMObjective):
        sampler = sampler or "ddim"
        if sampler != "ddim":
            raise ConfigError(f"sampler {sampler!r} needs a flow objective; use ddim for eps/v")
        ts = ddim_timesteps(objective.num_train_timesteps, steps, timestep_spacing, steps_offset)
        return _ddim(fn, objective, z, ts, set_alpha_to_one, callback)
    if isinstance(objective, FlowMatchingObjective):
        sampler = sampler or "heun"
        if sampler not in ("euler", "heun"):
            raise ConfigError(f"sampler {sampler!r} needs a DDPM objective; use euler or heun")
        return _flow_ode(fn, objective, z, flow_time_grid(steps), sampler == "heun", callback)
    raise ConfigError(f"no sampler for objective {type(objective).__name__}")


def _ddim(
    fn: DenoiserFn,
    obj: DDPMObjective,
    z: Tensor,
    ts: Tensor,
    set_alpha_to_one: bool,
    callback: Callable[[int, int], None] | None,
) -> Tensor:
    """Deterministic DDIM (eta = 0); see the module docstring."""
    abar = obj.alphas_cumprod.to(z.device)
    final = torch.ones((), device=z.device) if set_alpha_to_one else abar[0]
    batch = z.shape[0]
    for i, t in enumerate(ts.tolist()):
        t_B = torch.full((batch,), t, dtype=torch.long, device=z.device)
        out = fn(z, obj.model_timestep(t_B), None).float()
        z0 = obj.predict_z0(z, t_B, out)
        eps = obj.predict_eps(z, t_B, out)
        a_prev = abar[int(ts[i + 1])] if i + 1 < len(ts) else final
        z = a_prev.sqrt() * z0 + (1.0 - a_prev).sqrt() * eps
        if callback is not None:
            callback(i + 1, len(ts))
    return z


def _flow_ode(
    fn: DenoiserFn,
    obj: FlowMatchingObjective,
    z: Tensor,
    grid: Tensor,
    heun: bool,
    callback: Callable[[int, int], None] | None,
) -> Tensor:
    """Euler / Heun integration of ``dz/dt = v`` along ``grid`` (descending t)."""
    batch = z.shape[0]
    n = len(grid) - 1

    def velocity(z_: Tensor, t: float) -> Tensor:
        t_B = torch.full((batch,), t, dtype=torch.float32, device=z.device)
        return fn(z_, obj.model_timestep(t_B), None).float()

    for i in range(n):
        t0, t1 = float(grid[i]), float(grid[i + 1])
        h = t1 - t0
        d0 = velocity(z, t0)
        if heun:
            z_e = z + h * d0
            z = z + (0.5 * h) * (d0 + velocity(z_e, t1))
        else:
            z = z + h * d0
        if callback is not None:
            callback(i + 1, n)
    return z
