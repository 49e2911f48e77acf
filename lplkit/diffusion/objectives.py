"""Training objectives: DDPM (eps / v prediction) and flow matching, as pure tensor math.

Every objective shares one interface (all tensors batch-first, ``t`` of shape ``(B,)``):

- ``sample_timesteps(batch, generator, device) -> t``
- ``add_noise(z0, eps, t) -> z_t``
- ``target(z0, eps, t)`` the regression target of the denoiser
- ``predict_z0(z_t, t, model_out) -> z0_hat`` (x0 recovery, used by the LPL and the samplers)
- ``snr(t) -> (B,)`` signal-to-noise ratio per sample
- ``model_timestep(t)`` what the denoiser receives as its timestep
- ``loss(model_out, target) -> (B,)`` per-sample mean squared error
- ``compute(z0, eps, t) -> ObjectiveSample`` all of the above for one batch
- ``gate(t, snr_min=..., max_timestep=...) -> bool (B,)`` which samples get the LPL term

DDPM (Ho et al. 2020), discrete ``t in {0..T-1}``, ``alpha_bar_t = prod_{s<=t} (1 - beta_s)``:

    z_t = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) eps =: alpha_t z0 + sigma_t eps
    eps-prediction target: eps            z0 = (z_t - sigma_t eps_hat) / alpha_t
    v-prediction target:   v = alpha_t eps - sigma_t z0       z0 = alpha_t z_t - sigma_t v_hat
    SNR(t) = alpha_bar_t / (1 - alpha_bar_t)

Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023), continuous ``t in [0, 1]``:

    z_t = (1 - t) z0 + t eps,   target v = dz_t/dt = eps - z0,   z0 = z_t - t v_hat
    SNR(t) = ((1 - t) / t)^2

The betas reproduce diffusers' ``DDPMScheduler`` bit for bit (float32 linspace / cumprod), so models
trained here sample with diffusers schedulers and vice versa.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lplkit.errors import ConfigError

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
Prediction = Literal["eps", "v"]
TimeSampling = Literal["uniform", "logit-normal"]
ObjectiveName = Literal["eps", "v", "flow"]

__all__ = [
    "DDPMObjective",
    "FlowMatchingObjective",
    "Objective",
    "ObjectiveSample",
    "build_objective",
    "ddpm_alphas_cumprod",
    "snr_gate",
]


@dataclass(frozen=True)
class ObjectiveSample:
    """One noised batch and everything the trainer needs from it.

    Attributes:
        t: timesteps ``(B,)`` (DDPM: int64 in [0, T); flow: float32 in [0, 1]).
        z_t: noised latents, same shape as ``z0``.
        target: the denoiser's regression target, same shape as ``z0``.
        snr: per-sample SNR ``(B,)`` float32 (``inf`` at a noise-free t).
        model_t: the timestep the denoiser receives (see ``model_timestep``).
    """

    t: Tensor
    z_t: Tensor
    target: Tensor
    snr: Tensor
    model_t: Tensor


def _bcast(v_B: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` tensor to broadcast against ``like`` ``(B, ...)``."""
    return v_B.reshape(-1, *([1] * (like.ndim - 1))).to(dtype=like.dtype, device=like.device)


def snr_gate(snr: Tensor, snr_min: float) -> Tensor:
    """Boolean mask ``snr >= snr_min`` (B,): the samples clean enough for the LPL term."""
    return snr >= snr_min


def ddpm_alphas_cumprod(
    schedule: BetaSchedule,
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
) -> Tensor:
    """``alpha_bar_t = prod_{s<=t} (1 - beta_s)`` exactly as diffusers' ``DDPMScheduler`` (float32).

    - ``linear``: ``beta = linspace(beta_start, beta_end, T)``
    - ``scaled_linear``: ``beta = linspace(sqrt(beta_start), sqrt(beta_end), T)^2`` (Stable Diffusion)
    - ``squaredcos_cap_v2``: ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)`` with
      ``abar(s) = cos((s + 0.008) / 1.008 * pi / 2)^2`` (Nichol & Dhariwal 2021); betas ignore
      ``beta_start``/``beta_end``.
    """
    T = num_train_timesteps
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)],
            dtype=torch.float32,
        )
    else:
        raise ConfigError(
            f"unknown beta schedule {schedule!r}; use linear, scaled_linear or squaredcos_cap_v2"
        )
    return torch.cumprod(1.0 - betas, dim=0)


class Objective:
    """Base class: the shared interface (see module docstring). Subclasses fill in the math."""

    name: str

    @property
    def spec(self) -> dict[str, object]:
        """JSON-serializable kwargs: ``build_objective(**spec)`` rebuilds this objective."""
        raise NotImplementedError

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Draw ``(B,)`` training timesteps with ``generator`` (on the generator's device)."""
        raise NotImplementedError

    def add_noise(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Forward process ``z_t`` from clean latents ``z0`` and Gaussian noise ``eps``."""
        raise NotImplementedError

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """Regression target of the denoiser."""
        raise NotImplementedError

    def predict_z0(self, z_t: Tensor, t: Tensor, model_out: Tensor) -> Tensor:
        """Recover the clean-latent estimate ``z0_hat`` from the model output."""
        raise NotImplementedError

    def snr(self, t: Tensor) -> Tensor:
        """Per-sample signal-to-noise ratio ``(B,)`` float32."""
        raise NotImplementedError

    def model_timestep(self, t: Tensor) -> Tensor:
        """The timestep value the denoiser is conditioned on."""
        raise NotImplementedError

    def min_snr_weight(self, t: Tensor, gamma: float) -> Tensor:
        """Min-SNR-gamma weight of this objective's own MSE, ``(B,)`` float32 (Hang et al. 2023,
        arXiv 2303.09556): ``min(SNR, gamma)`` on a z0 error, divided by what turns a z0 error into
        this objective's error: eps ``/ SNR``, DDPM v ``/ (SNR + 1)``, flow velocity ``* t^2``.
        The eps/v forms are diffusers' ``--snr_gamma`` weights (its LPL trainer's ``--lpl_scale``)."""
        raise NotImplementedError

    def gate(
        self, t: Tensor, *, snr_min: float | None = None, max_timestep: int | None = None
    ) -> Tensor:
        """Which samples get the LPL term: ``snr(t) >= snr_min`` (and/or DDPM ``t < max_timestep``)."""
        mask = torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
        if snr_min is not None:
            mask &= snr_gate(self.snr(t), snr_min)
        if max_timestep is not None:
            mask &= self._timestep_gate(t, max_timestep)
        return mask

    def _timestep_gate(self, t: Tensor, max_timestep: int) -> Tensor:
        raise ConfigError(
            f"max_timestep gate is defined for DDPM objectives only, not {self.name!r}; use snr_min"
        )

    @staticmethod
    def loss(model_out: Tensor, target: Tensor) -> Tensor:
        """Per-sample MSE ``mean_{C,H,W} (model_out - target)^2`` -> ``(B,)``, computed in float32."""
        diff = model_out.float() - target.float()
        return diff.pow(2).flatten(1).mean(dim=1)

    def compute(self, z0: Tensor, eps: Tensor, t: Tensor) -> ObjectiveSample:
        """Noise ``z0`` at ``t`` and return ``z_t``, the target, SNR and the model timestep."""
        return ObjectiveSample(
            t=t,
            z_t=self.add_noise(z0, eps, t),
            target=self.target(z0, eps, t),
            snr=self.snr(t),
            model_t=self.model_timestep(t),
        )


class DDPMObjective(Objective):
    """Discrete-time DDPM with eps- or v-prediction (schedule as diffusers' ``DDPMScheduler``).

    Args:
        prediction: ``"eps"`` (target eps) or ``"v"`` (target ``alpha_t eps - sigma_t z0``).
        beta_schedule: ``linear`` | ``scaled_linear`` | ``squaredcos_cap_v2``.
        num_train_timesteps: ``T``.
        beta_start, beta_end: endpoints of the (scaled) linear schedules.
    """

    def __init__(
        self,
        prediction: Prediction = "eps",
        beta_schedule: BetaSchedule = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
    ) -> None:
        if prediction not in ("eps", "v"):
            raise ConfigError(f"unknown DDPM prediction {prediction!r}; use eps or v")
        self.name = prediction
        self.prediction = prediction
        self.beta_schedule = beta_schedule
        self.num_train_timesteps = num_train_timesteps
        self.beta_start, self.beta_end = beta_start, beta_end
        self.alphas_cumprod = ddpm_alphas_cumprod(
            beta_schedule, num_train_timesteps, beta_start, beta_end
        )

    @property
    def spec(self) -> dict[str, object]:
        """JSON-serializable kwargs: ``build_objective(**spec)`` rebuilds this objective."""
        return {
            "name": self.prediction,
            "beta_schedule": self.beta_schedule,
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha_t, sigma_t) = (sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t))``, each ``(B,)`` float32."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar.sqrt(), (1.0 - abar).sqrt()

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """Uniform integers ``t ~ U{0, ..., T-1}`` (int64)."""
        gdev = generator.device if generator is not None else device
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=gdev)
        return t.to(device)

    def add_noise(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``z_t = alpha_t z0 + sigma_t eps`` (diffusers ``DDPMScheduler.add_noise``)."""
        a, s = self.alpha_sigma(t)
        return _bcast(a, z0) * z0 + _bcast(s, z0) * eps

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """eps, or ``v = alpha_t eps - sigma_t z0`` (diffusers ``get_velocity``)."""
        if self.prediction == "eps":
            return eps
        a, s = self.alpha_sigma(t)
        return _bcast(a, z0) * eps - _bcast(s, z0) * z0

    def predict_z0(self, z_t: Tensor, t: Tensor, model_out: Tensor) -> Tensor:
        """eps: ``(z_t - sigma_t eps_hat) / alpha_t``; v: ``alpha_t z_t - sigma_t v_hat``."""
        a, s = self.alpha_sigma(t)
        a, s = _bcast(a, z_t), _bcast(s, z_t)
        if self.prediction == "eps":
            return (z_t - s * model_out) / a
        return a * z_t - s * model_out

    def predict_eps(self, z_t: Tensor, t: Tensor, model_out: Tensor) -> Tensor:
        """Noise estimate: eps: ``eps_hat``; v: ``sigma_t z_t + alpha_t v_hat`` (used by DDIM)."""
        if self.prediction == "eps":
            return model_out
        a, s = self.alpha_sigma(t)
        return _bcast(s, z_t) * z_t + _bcast(a, z_t) * model_out

    def snr(self, t: Tensor) -> Tensor:
        """``SNR(t) = alpha_bar_t / (1 - alpha_bar_t)``."""
        abar = self.alphas_cumprod.to(t.device)[t.long()]
        return abar / (1.0 - abar)

    def model_timestep(self, t: Tensor) -> Tensor:
        """The integer timestep itself (int64), as DiT / diffusers UNets expect."""
        return t.long()

    def min_snr_weight(self, t: Tensor, gamma: float) -> Tensor:
        """eps: ``min(SNR, gamma) / SNR``; v: ``min(SNR, gamma) / (SNR + 1)``."""
        snr = self.snr(t).float()
        clipped = snr.clamp(max=gamma)
        return clipped / snr if self.prediction == "eps" else clipped / (snr + 1.0)

    def _timestep_gate(self, t: Tensor, max_timestep: int) -> Tensor:
        """``t < max_timestep`` (the reference code's ``t < 200``)."""
        return t < max_timestep


class FlowMatchingObjective(Objective):
    """Rectified flow ``z_t = (1 - t) z0 + t eps`` with velocity target ``eps - z0``.

    Args:
        time_sampling: ``uniform`` (``t ~ U[0, 1)``) or ``logit-normal``
            (``t = sigmoid(m + s n)``, ``n ~ N(0, 1)``; Esser et al. 2024, SD3).
        logit_mean, logit_std: ``m`` and ``s`` of the logit-normal density.
    """

    name = "flow"

    def __init__(
        self,
        time_sampling: TimeSampling = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ) -> None:
        if time_sampling not in ("uniform", "logit-normal"):
            raise ConfigError(
                f"unknown flow time sampling {time_sampling!r}; use uniform or logit-normal"
            )
        self.time_sampling = time_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std

    @property
    def spec(self) -> dict[str, object]:
        """JSON-serializable kwargs: ``build_objective(**spec)`` rebuilds this objective."""
        return {
            "name": "flow",
            "time_sampling": self.time_sampling,
            "logit_mean": self.logit_mean,
            "logit_std": self.logit_std,
        }

    def sample_timesteps(
        self,
        batch: int,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> Tensor:
        """``t ~ U[0, 1)`` or ``sigmoid(m + s n)`` (float32)."""
        gdev = generator.device if generator is not None else device
        if self.time_sampling == "uniform":
            t = torch.rand(batch, generator=generator, device=gdev)
        else:
            n = torch.randn(batch, generator=generator, device=gdev)
            t = torch.sigmoid(self.logit_mean + self.logit_std * n)
        return t.to(device)

    def add_noise(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``z_t = (1 - t) z0 + t eps``."""
        tb = _bcast(t, z0)
        return (1.0 - tb) * z0 + tb * eps

    def target(self, z0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """``v = dz_t/dt = eps - z0`` (independent of t)."""
        return eps - z0

    def predict_z0(self, z_t: Tensor, t: Tensor, model_out: Tensor) -> Tensor:
        """``z0 = z_t - t v_hat``."""
        return z_t - _bcast(t, z_t) * model_out

    def snr(self, t: Tensor) -> Tensor:
        """``SNR(t) = ((1 - t) / t)^2`` (``inf`` at t = 0)."""
        t = t.float()
        return ((1.0 - t) / t) ** 2

    def model_timestep(self, t: Tensor) -> Tensor:
        """``1000 t`` (float), the scale DiT's sinusoidal timestep embedding was designed for."""
        return t.float() * 1000.0

    def min_snr_weight(self, t: Tensor, gamma: float) -> Tensor:
        """``min(SNR, gamma) t^2``: the velocity error is the z0 error / t (``z0 = z_t - t v``)."""
        t = t.float()
        return self.snr(t).clamp(max=gamma) * t.square()


def build_objective(name: ObjectiveName, **kwargs: object) -> Objective:
    """``eps``/``v`` -> :class:`DDPMObjective`, ``flow`` -> :class:`FlowMatchingObjective`.

    ``kwargs`` go to the constructor (e.g. ``beta_schedule`` or ``time_sampling``).
    """
    if name not in ("eps", "v", "flow"):
        raise ConfigError(f"unknown objective {name!r}; use eps, v or flow")
    try:
        if name == "flow":
            return FlowMatchingObjective(**kwargs)  # type: ignore[arg-type]
        return DDPMObjective(prediction=name, **kwargs)  # type: ignore[arg-type]
    except TypeError as e:  # an option of the other family, e.g. beta_schedule for flow
        raise ConfigError(f"objective {name!r}: {e}") from None
