# Which decoder piece does torch 2.13 CPU inductor differentiate wrongly? compiled vs eager grads per module.
import sys, time, torch
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # the repository
sys.path.insert(0, str(ROOT / "benchmarks")); sys.path.insert(0, str(ROOT))
from random_autoencoders import random_autoencoder
torch.manual_seed(0)
vae = random_autoencoder("tiny").float().eval()
dec = vae.decoder
g = torch.Generator().manual_seed(0)
z = torch.randn(4, vae.config.latent_channels, 16, 16, generator=g)
# eager inputs of each piece
acts = {}
with torch.no_grad():
    h = vae.post_quant_conv(z) if vae.post_quant_conv is not None else z
    acts["conv_in"] = h; h = dec.conv_in(h)
    acts["mid_block"] = h; h = dec.mid_block(h)
    for i, ub in enumerate(dec.up_blocks):
        acts[f"up_blocks.{i}"] = h; h = ub(h)
    acts["out"] = h
mods = {"conv_in": dec.conv_in, "mid_block": dec.mid_block, **{f"up_blocks.{i}": ub for i, ub in enumerate(dec.up_blocks)},
        "out": torch.nn.Sequential(dec.conv_norm_out, dec.conv_act, dec.conv_out)}
only = sys.argv[1:] or list(mods)
for name in only:
    m = mods[name]
    x0 = acts[name]
    w = torch.randn(m(x0).shape, generator=g)
    def f(x, m=m, w=w):
        return (m(x) * w).sum()
    x = x0.clone().requires_grad_()
    (ge,) = torch.autograd.grad(f(x), x)
    torch._dynamo.reset()
    cf = torch.compile(f, dynamic=None)
    xc = x0.clone().requires_grad_()
    torch._dynamo.maybe_mark_dynamic(xc, 0)
    t0 = time.perf_counter()
    try:
        vc = cf(xc)
        (gc,) = torch.autograd.grad(vc, xc)
        print(f"{name:12s} value err {float((vc - f(x0)).abs()):.2e}  grad rel err {float((gc - ge).norm() / ge.norm()):.2e}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    except Exception as e:
        print(name, "FAILED", type(e).__name__, str(e)[:200], flush=True)
