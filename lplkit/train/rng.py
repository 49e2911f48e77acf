"""Randomness derived from (seed, step, stream) so an interrupted run resumes bit-exactly.

Nothing in the training step draws from a generator whose state depends on history: each step
builds fresh generators from `SeedSequence([seed, step, stream])`. Noise, timesteps and label
dropout are drawn for the *global* batch and each rank/micro-step takes its slice, so a 2-process
run sees exactly the random numbers of a 1-process run with the same global batch.
"""

from __future__ import annotations

import random
from enum import IntEnum
from typing import Any

import numpy as np
import torch


class Stream(IntEnum):
    """Independent random streams inside one step."""

    TIMESTEP = 0
    NOISE = 1
    LABEL_DROP = 2
    GLOBAL = 3  # seeds torch's global RNG (dropout layers, anything we do not control)
    LPL_CROP = 4  # where each sample's LPL crop window goes (lpl.loss.crop)


def derive_seed(seed: int, step: int, stream: int, rank: int = 0) -> int:
    """A 63-bit seed, a hash of (seed, step, stream, rank) via numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, step, int(stream), rank]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def step_generator(seed: int, step: int, stream: Stream, device: str | torch.device = "cpu"):
    """A torch.Generator seeded for (seed, step, stream); identical on every rank."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, step, stream))
    return gen


def capture_rng_state() -> dict:
    """torch (CPU, CUDA), numpy and python RNG states as tensors / plain values (weights_only safe)."""
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]  # legacy tuple
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "python_version": int(random.getstate()[0]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"]), None))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
