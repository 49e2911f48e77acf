"""Compiled (inductor, CPU, lplkit's CPU_INDUCTOR_OPTIONS) vs eager LPL gradient on a random decoder.

    PYTHONPATH=. python docs/results/inductor-cpu-zero-grad/decoder_check.py KIND DEPTH LATENT [expand]

KIND: tiny/small/sd (benchmarks/random_autoencoders.py). `expand` swaps F.interpolate's nearest 2x
for an expand + reshape (same values; its backward is a sum, not the index_put scatter-add that
inductor mis-schedules). Output of the runs: output_decoders.txt.
"""

import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "benchmarks"))
import torch.nn.functional as F
from random_autoencoders import random_autoencoder

import lplkit.lpl.loss as L

if len(sys.argv) > 4 and sys.argv[4] == "expand":
    real = F.interpolate

    def interp(x, size=None, scale_factor=None, mode="nearest", **kw):
        if mode == "nearest" and size is None and scale_factor in (2, 2.0):
            n, c, h, w = x.shape
            return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)
        return real(x, size=size, scale_factor=scale_factor, mode=mode, **kw)

    F.interpolate = interp
kind, depth, lat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vae = random_autoencoder(kind).requires_grad_(False)
g = torch.Generator().manual_seed(0)
target = torch.randn(2, 4, lat, lat, generator=g)
pred = target + 0.3 * torch.randn(target.shape, generator=g)


def vg(lpl):
    p = pred.clone().requires_grad_()
    out = lpl(p, target)
    out.sum().backward()
    return out.detach(), p.grad


v0, g0 = vg(L.LatentPerceptualLoss(vae, depth=depth))
t = time.time()
comp = L.LatentPerceptualLoss(vae, depth=depth, compile=True)
comp._verified.add(("cpu", False))
v1, g1 = vg(comp)
print(
    f"{sys.argv[4:]} {kind} depth {depth} latent {lat}: value err {float((v1 - v0).abs().max() / v0.abs().max()):.1e} grad rel err {float((g1 - g0).norm() / g0.norm()):.2e} ({time.time() - t:.0f}s)",
    flush=True,
)
