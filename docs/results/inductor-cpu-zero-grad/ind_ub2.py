import sys, time, torch
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
from random_autoencoders import random_autoencoder
torch.manual_seed(0)
vae = random_autoencoder("tiny").float().eval()
dec = vae.decoder
ub = dec.up_blocks[0]
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    h = dec.mid_block(dec.conv_in(vae.post_quant_conv(torch.randn(4, 4, 16, 16, generator=g))))
def seq(x):
    for rn in ub.resnets:
        x = rn(x, None)
    return ub.upsamplers[0](x)
def last_resnet_up(x):
    return ub.upsamplers[0](ub.resnets[-1](x, None))
cases = {"ub(x)": lambda x: ub(x), "resnets->upsampler": seq, "resnet[-1]->upsampler": last_resnet_up}
for dyn in (True, False):
    for name, fn in cases.items():
        w = torch.randn(fn(h).shape, generator=g)
        f = lambda x, fn=fn, w=w: (fn(x) * w).sum()
        x = h.clone().requires_grad_()
        (ge,) = torch.autograd.grad(f(x), x)
        torch._dynamo.reset()
        xc = h.clone().requires_grad_()
        if dyn:
            torch._dynamo.maybe_mark_dynamic(xc, 0)
        t0 = time.perf_counter()
        (gc,) = torch.autograd.grad(torch.compile(f)(xc), xc)
        print(f"dynamic={dyn} {name:22s} grad rel err {float((gc - ge).norm() / ge.norm()):.2e} |gc| {float(gc.norm()):.3e} |ge| {float(ge.norm()):.3e} ({time.perf_counter() - t0:.0f}s)", flush=True)
