"""Exponential moving average of the model weights, with its own checkpointable state.

    ema_k = d_k * ema_{k-1} + (1 - d_k) * theta_k,   d_k = min(decay, (1 + k) / (10 + k)) with warmup
                                                      (d_k = decay without)

where k counts optimizer updates. The shadow copy lives in float32 on the model's device; buffers are
copied. `state_dict()` returns the averaged weights (savable as safetensors) and `num_updates`, so a
resumed run continues the same average instead of restarting it from the current weights (the DiT
resume bug).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """EMA of `model`'s parameters; `.model` is a frozen module holding the averaged weights."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True) -> None:
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def current_decay(self) -> float:
        """d_k for the next update."""
        k = self.num_updates
        return min(self.decay, (1.0 + k) / (10.0 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema <- d * ema + (1 - d) * theta, buffers copied."""
        d = self.current_decay()
        ema_params = dict(self.model.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach().float(), 1.0 - d)
        ema_bufs = dict(self.model.named_buffers())
        for name, b in model.named_buffers():
            ema_bufs[name].copy_(b)
        self.num_updates += 1

    def weights(self) -> dict[str, torch.Tensor]:
        """The averaged weights (a state_dict of the EMA model)."""
        return self.model.state_dict()

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict, weights: dict[str, torch.Tensor]) -> None:
        """Restore counters from `state` and the averaged weights from `weights`."""
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(weights)
