"""Standalone reproducer of the wrong CPU-inductor gradient behind the LPL compile check (#15).

A diffusers ResnetBlock2D with FROZEN parameters followed by an Upsample2D (the decoder up block
pattern of every SD-style VAE): torch.compile (inductor, CPU) returns an all-zero gradient w.r.t.
the input; eager and the aot_eager backend agree. Freezing only the upsampler is fine.

    OMP_NUM_THREADS=1 python docs/results/inductor-cpu-zero-grad/repro.py [frozen|frozen-up|frozen-rn|none]
"""

import sys

import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D

torch.manual_seed(0)
C = 16
rn = ResnetBlock2D(in_channels=C, out_channels=C, temb_channels=None, groups=4).eval()
up = Upsample2D(C, use_conv=True, out_channels=C).eval()
mode = sys.argv[1] if len(sys.argv) > 1 else "frozen"
if mode in ("frozen", "frozen-rn"):
    rn.requires_grad_(False)
if mode in ("frozen", "frozen-up"):
    up.requires_grad_(False)
x0 = torch.randn(4, C, 8, 8)
w = torch.randn(4, C, 16, 16)


def f(x):
    return (up(rn(x, None)) * w).sum()


x = x0.clone().requires_grad_()
(ge,) = torch.autograd.grad(f(x), x)
print("torch", torch.__version__, "mode", mode)
for backend in ("aot_eager", "inductor"):
    torch._dynamo.reset()
    xc = x0.clone().requires_grad_()
    (gc,) = torch.autograd.grad(torch.compile(f, backend=backend)(xc), xc)
    err = float((gc - ge).norm() / ge.norm())
    print(f"{backend:10s} grad rel err {err:.2e}  |grad| {float(gc.norm()):.3e} (eager {float(ge.norm()):.3e})")
