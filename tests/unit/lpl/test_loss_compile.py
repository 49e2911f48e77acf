"""The compiled LPL (`compile=True`): same values and gradients as eager, one graph for every gated
batch size >= 2, and the channels-last decoder layout.

Dynamo's trace is what makes the compiled path differ from eager (graph capture, the dynamic batch
dimension, AOTAutograd's backward); the default tests compile with the `aot_eager` / `eager`
backends, which run that same trace without inductor's C++ code generation (minutes on a CPU).
All of them are marked slow: even the dynamo trace of the tiny decoder takes 20-160 s on the shared
2-core dev box (timings in docs/benchmarks.md).
"""

from __future__ import annotations

import functools

import pytest
import torch
from helpers.models import make_tiny_vae
from torch._dynamo.utils import counters

from lplkit.lpl.loss import LatentPerceptualLoss


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(0)


@pytest.fixture
def backend(monkeypatch):
    """Make `torch.compile` (as the loss calls it) use the given backend; fresh dynamo state."""
    real = torch.compile

    def use(name: str) -> None:
        monkeypatch.setattr(torch, "compile", functools.partial(_without_options, real, name))

    torch._dynamo.reset()
    counters.clear()
    yield use
    torch._dynamo.reset()


def _without_options(real, backend, fn, *, options=None, **kw):
    """torch.compile with a non-inductor backend: drop the loss's inductor-only options."""
    return real(fn, backend=backend, **kw)


def latents(n, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(n, 4, size, size, generator=g)
    return target + 0.3 * torch.randn(target.shape, generator=g), target


def value_and_grad(lpl, pred, target, **kw):
    p = pred.clone().requires_grad_()
    out = lpl(p, target, **kw)
    out.sum().backward()
    return out.detach(), p.grad


@pytest.mark.slow
@pytest.mark.timeout(1800)  # compilation: minutes on a loaded 2-core box
@pytest.mark.parametrize(
    "opts",
    [
        {"preset": "paper", "depth": 1},
        {"preset": "diffusers-reference", "depth": 1},  # grad checkpointing inside the graph
        {"preset": "paper", "depth": 1, "crop": 4, "channels_last": True},
    ],
    ids=["paper", "reference-ckpt", "crop-channels-last"],
)
def test_compiled_equals_eager_values_and_gradients(vae, backend, opts):
    backend("aot_eager")
    pred, target = latents(4)
    u = torch.rand(4, 2, generator=torch.Generator().manual_seed(1))
    eager = LatentPerceptualLoss(vae, **{**opts, "channels_last": False})
    compiled = LatentPerceptualLoss(vae, **opts, compile=True)
    v0, g0 = value_and_grad(eager, pred, target, crop_u=u)
    v1, g1 = value_and_grad(compiled, pred, target, crop_u=u)
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-7)
    assert counters["stats"]["unique_graphs"] == 1  # it really ran through dynamo
    if opts.get("channels_last"):
        vae.to(memory_format=torch.contiguous_format)  # the module fixture is shared


@pytest.mark.slow
@pytest.mark.timeout(1800)  # compilation: minutes on a loaded 2-core box
def test_gate_size_change_does_not_recompile(vae, backend):
    """12 then 13 gated rows (and 5): one graph. n = 1 is specialized by torch: one more, once."""
    backend("eager")
    lpl = LatentPerceptualLoss(vae, depth=0, compile=True)
    for n in (12, 13, 5):
        value_and_grad(lpl, *latents(n))
    assert counters["stats"]["unique_graphs"] == 1
    value_and_grad(lpl, *latents(1))
    value_and_grad(lpl, *latents(1, seed=1))
    assert counters["stats"]["unique_graphs"] == 2


def test_channels_last_equals_contiguous(vae):
    pred, target = latents(3, size=16)
    want = value_and_grad(LatentPerceptualLoss(vae), pred, target)
    try:
        lpl = LatentPerceptualLoss(vae, channels_last=True)
        conv = vae.decoder.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        got = value_and_grad(lpl, pred, target)
    finally:
        vae.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # compilation: minutes on a loaded 2-core box
def test_a_compiled_gradient_that_differs_from_eager_is_refused(vae, monkeypatch):
    """A backend whose backward halves every gradient (as a miscompiled kernel might): the
    one-time check against eager raises instead of training on it; values alone still pass."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    from lplkit.errors import ConfigError

    def halved_backward(gm, example_inputs):
        def run(*args):
            return [o * 0.5 if isinstance(o, torch.Tensor) else o for o in gm(*args)]

        return make_boxed_func(run)

    bad = aot_autograd(fw_compiler=lambda gm, ex: make_boxed_func(gm.forward),
                       bw_compiler=halved_backward)  # fmt: skip
    real = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(_without_options, real, bad))
    torch._dynamo.reset()
    lpl = LatentPerceptualLoss(vae, depth=0, compile=True)
    pred, target = latents(4)
    with torch.no_grad():  # no gradient asked: no check, and the values agree
        torch.testing.assert_close(
            lpl(pred, target), LatentPerceptualLoss(vae, depth=0)(pred, target)
        )
    with pytest.raises(ConfigError, match=r"gradient error 5\.0e-01"):
        value_and_grad(lpl, pred, target)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # compilation: minutes on a loaded 2-core box
def test_inductor_compiled_equals_eager(vae):
    """The real backend (inductor C++ kernels on CPU; minutes of compilation on a 2-core box) on
    the full tiny decoder: equal to eager. With inductor's default options torch 2.13 returned a
    wrong gradient (relative error 0.66; 0.87 with only layout optimization off, 0.42 with only
    the peak-memory reordering off) and the one-time check refused it (docs/benchmarks.md);
    `CPU_INDUCTOR_OPTIONS` turns both passes off."""
    torch._dynamo.reset()
    pred, target = latents(4)
    want = value_and_grad(LatentPerceptualLoss(vae), pred, target)
    got = value_and_grad(LatentPerceptualLoss(vae, compile=True), pred, target)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-7)
    torch._dynamo.reset()


def test_cpu_compile_turns_the_faulty_inductor_passes_off(vae, monkeypatch):
    """The CPU graph is compiled with the two inductor passes off (the wrong-gradient workaround),
    built once per device type; recorded here without compiling anything."""
    from lplkit.lpl.loss import CPU_INDUCTOR_OPTIONS

    calls = []

    def record(fn, **kw):
        calls.append(kw)
        return fn  # run eagerly

    monkeypatch.setattr(torch, "compile", record)
    lpl = LatentPerceptualLoss(vae, depth=0, compile=True)
    assert calls == []  # nothing compiled before the first call
    for n in (3, 4):
        value_and_grad(lpl, *latents(n))
    want = {"layout_optimization": False, "reorder_for_peak_memory": False}
    assert calls == [{"options": want}]
    assert dict(CPU_INDUCTOR_OPTIONS) == want


def test_skip_compile_check_lets_a_refused_graph_run(vae, monkeypatch):
    """A 'compiled' function that halves the terms is refused by the one-time check; after
    `skip_compile_check` (what the benchmarks call to time such a graph) it runs unchecked."""
    from lplkit.errors import ConfigError

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: lambda p, t: 0.5 * fn(p, t))
    pred, target = latents(4)
    with pytest.raises(ConfigError, match="differs from eager"):
        value_and_grad(LatentPerceptualLoss(vae, depth=0, compile=True), pred, target)
    lpl = LatentPerceptualLoss(vae, depth=0, compile=True)
    lpl.skip_compile_check("cpu")
    got, _ = value_and_grad(lpl, pred, target)
    want, _ = value_and_grad(LatentPerceptualLoss(vae, depth=0), pred, target)
    torch.testing.assert_close(got, 0.5 * want)
