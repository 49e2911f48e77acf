"""Small stand-ins for the trainer tests: an in-memory store and a tiny diffusers DiT."""

from __future__ import annotations

import numpy as np
import torch

from lplkit.train.config import TrainConfig


class MemoryStore:
    """Implements the `LatentStore.batches` contract on in-memory moments.

    Global batch j of epoch e = rows perm_e[j*B:(j+1)*B] with B = batch_size * world_size; rank r
    gets rows [r*b:(r+1)*b] of it; latents = mean + std * noise drawn from (seed, epoch, position).
    """

    def __init__(self, n: int = 16, shape=(4, 8, 8), num_classes: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.mean = rng.standard_normal((n, *shape)).astype(np.float32)
        self.std = np.full((n, *shape), 0.05, np.float32)
        self.labels = (np.arange(n) % num_classes).astype(np.int64)
        self.n = n
        self.calls: list[dict] = []

    def __len__(self) -> int:
        return self.n

    def batches(
        self, batch_size, *, seed, shuffle=True, epoch=0, start_batch=0, rank=None, world_size=None
    ):
        self.calls.append(
            dict(
                batch_size=batch_size,
                epoch=epoch,
                start_batch=start_batch,
                rank=rank,
                world_size=world_size,
            )
        )
        r, w = rank or 0, world_size or 1
        perm = (
            np.random.default_rng([seed, epoch]).permutation(self.n)
            if shuffle
            else np.arange(self.n)
        )
        gb = batch_size * w
        for j in range(start_batch, self.n // gb):
            rows = perm[j * gb : (j + 1) * gb][r * batch_size : (r + 1) * batch_size]
            noise = np.stack(
                [
                    np.random.default_rng([seed, epoch, int(p)]).standard_normal(
                        self.mean.shape[1:]
                    )
                    for p in rows
                ]
            ).astype(np.float32)
            lat = self.mean[rows] + self.std[rows] * noise
            yield torch.from_numpy(lat), torch.from_numpy(self.labels[rows])


def tiny_components(store=None, *, objective="flow", lpl=None, num_classes=3, seed=0):
    """`Components` around a real DiT-T/2 and the real objectives, on an in-memory store."""
    from lplkit.diffusion.denoisers import build_model
    from lplkit.diffusion.objectives import build_objective
    from lplkit.train.loop import Components
    from lplkit.train.normalization import LatentNormalizer

    store = store or MemoryStore(num_classes=num_classes)
    c, h, _ = store.mean.shape[1:]
    torch.manual_seed(seed)
    model = build_model("DiT-T/2", in_channels=c, sample_size=h, num_classes=num_classes)
    return Components(
        model=model,
        objective=build_objective(objective),
        normalizer=LatentNormalizer((0.1,) * c, (0.5,) * c, "autoencoder"),
        store=store,
        latent_shape=(c, h, h),
        null_label=model.null_class_id,
        conditional=True,
        lpl=lpl,
    )


def small_config(**kw) -> TrainConfig:
    cfg = TrainConfig(steps=kw.pop("steps", 8), batch_size=kw.pop("batch_size", 8), seed=3)
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_steps = 2
    cfg.ema_decay = 0.9
    cfg.log.every = 2
    cfg.log.tensorboard = False
    cfg.ckpt.every = 4
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def random_batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, 8, generator=g), torch.randn(b, 4, 8, 8, generator=g)


class CountingLpl:
    """Stand-in LPL: squared distance of a tiny VAE decoder's outputs; counts decoded rows."""

    def __init__(self):
        from helpers.models import make_tiny_vae

        self.vae = make_tiny_vae(0).requires_grad_(False)
        self.rows = 0
        self.vae.decoder.register_forward_hook(lambda m, a, o: self._count(a[0]))

    def _count(self, z):
        self.rows += z.shape[0]

    def __call__(self, pred_raw, target_raw):
        with torch.no_grad():
            ref = self.vae.decode(target_raw).sample
        return ((self.vae.decode(pred_raw).sample - ref) ** 2).mean(dim=(1, 2, 3))
