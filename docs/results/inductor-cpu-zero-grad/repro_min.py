"""Minimal pure-torch reproducer of the CPU-inductor zero input gradient (#15); no diffusers.

    y = conv2(upsample2x((x + conv1b(conv1a(groupnorm(x)))) / 1.0)),  loss = sum(y * w)

with the parameters frozen (as the LPL's decoder is). torch.compile (inductor, CPU) returns an
all-zero d loss / d x; eager, `aot_eager`, and inductor with `layout_optimization=False` or with
`reorder_for_peak_memory=False` agree. The generated backward (backward_call.txt) reads the
upsampling's gradient buffer before the scatter-add (index_put, accumulate) that fills it.
Removing any one piece (the GroupNorm, either residual conv, the `/ 1.0` that diffusers'
ResnetBlock2D applies as `output_scale_factor`, the upsampling or the last conv) or leaving the
parameters trainable gives the right gradient.

    OMP_NUM_THREADS=1 python docs/results/inductor-cpu-zero-grad/repro_min.py
"""

import torch
import torch.nn.functional as F
from torch import nn

torch.manual_seed(0)
C = 16
conv1a, conv1b, conv2 = (nn.Conv2d(C, C, 3, padding=1) for _ in range(3))
gn = nn.GroupNorm(4, C)
x0 = torch.randn(4, C, 8, 8)
w = torch.randn(4, C, 16, 16)


def f(x):
    h = (x + conv1b(conv1a(gn(x)))) / 1.0
    return (conv2(F.interpolate(h, scale_factor=2.0, mode="nearest")) * w).sum()


def grad(fn):
    x = x0.clone().requires_grad_()
    return torch.autograd.grad(fn(x), x)[0]


print("torch", torch.__version__)
for frozen in (True, False):
    for m in (conv1a, conv1b, conv2, gn):
        m.requires_grad_(not frozen)
    ge = grad(f)
    for backend, options in (("aot_eager", None), ("inductor", None),
                             ("inductor", {"layout_optimization": False}),
                             ("inductor", {"reorder_for_peak_memory": False})):  # fmt: skip
        torch._dynamo.reset()
        gc = grad(torch.compile(f, backend=backend, options=options))
        err = float((gc - ge).norm() / ge.norm())
        print(f"frozen={frozen!s:5} {backend:9} {options!s:34} grad rel err {err:.2e}"
              f"  |grad| {float(gc.norm()):.3e} (eager {float(ge.norm()):.3e})")  # fmt: skip
