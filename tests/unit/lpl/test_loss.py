"""LatentPerceptualLoss: zero on equal inputs, gradient flow, freezing, presets, selection, helpers."""

from __future__ import annotations

import pytest
import torch
from helpers.models import make_tiny_vae
from torch.utils._python_dispatch import TorchDispatchMode

from lplkit.errors import ConfigError
from lplkit.lpl.config import LPL_PRESETS, resolve_lpl_config
from lplkit.lpl.decoder_taps import FeatureStats
from lplkit.lpl.loss import LatentPerceptualLoss


@pytest.fixture(scope="module")
def vae():
    return make_tiny_vae(0)


def latents(b=3, size=8, seed=0, noise=0.3):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(b, 4, size, size, generator=g)
    pred = target + noise * torch.randn(b, 4, size, size, generator=g)
    return pred, target


def unit_stats(channels_per_layer, mean=0.0, std=1.0):
    return {
        i: FeatureStats(
            torch.full((c,), mean),
            torch.full((c,), std),
            torch.full((c,), -2.0),
            torch.full((c,), 2.0),
        )
        for i, c in enumerate(channels_per_layer)
    }


STATS = unit_stats([16, 16, 16, 8])

ALL_VARIANTS = [
    {"norm": "l2"},
    {"norm": "l2-shared"},
    {"norm": "standardize-shared", "standardize_stats": "pred"},
    {"norm": "standardize-shared", "standardize_stats": "target"},
    {"norm": "dataset", "feature_stats": STATS},
    {"norm": "none", "distance": "l1"},
    {"norm": "l2", "outlier_source": "dataset", "feature_stats": STATS},
]


@pytest.mark.parametrize("opts", ALL_VARIANTS, ids=lambda o: "-".join(map(str, o.values()))[:40])
def test_lpl_of_equal_latents_is_zero(vae, opts):
    _, target = latents(size=16)
    lpl = LatentPerceptualLoss(vae, "paper", **opts)
    out = lpl(target, target.clone())
    assert out.shape == (3,)
    torch.testing.assert_close(out, torch.zeros(3), rtol=0, atol=1e-10)


@pytest.mark.parametrize("preset", list(LPL_PRESETS))
def test_gradients_reach_prediction_only_and_decoder_is_untouched(vae, preset):
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    lpl = LatentPerceptualLoss(vae, preset, feature_stats=STATS)  # paper-dataset reads them
    pred, target = latents(size=16)
    pred.requires_grad_()
    target.requires_grad_()
    loss = lpl(pred, target)
    assert loss.shape == (3,) and (loss > 0).all()
    loss.sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert target.grad is None
    assert all(p.grad is None for p in vae.parameters())
    assert all(not p.requires_grad for p in lpl.parameters())  # every module the loss runs
    assert not any(m.training for m in lpl.modules())
    for k, v in vae.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_paper_value_by_hand_against_decoder_modules(vae):
    """norm=none, no outliers, upsampling weights: sum_l w_l mean_(c,h,w)(dphi^2) / L by hand."""
    pred, target = latents()
    lpl = LatentPerceptualLoss(vae, norm="none", outliers=False)
    dec = vae.decoder

    def feats(z):
        h = dec.conv_in(vae.post_quant_conv(z))
        out = [dec.mid_block(h, None)]
        for blk in dec.up_blocks:
            out.append(blk(out[-1], None))
        return out

    with torch.no_grad():
        fp, ft = feats(pred), feats(target)
        weights = [1.0, 1 / 2, 1 / 4, 1 / 4]  # tiny VAE: factors 1, 2, 4, 4
        terms = [(a - b).square().mean(dim=(1, 2, 3)) for a, b in zip(fp, ft, strict=True)]
        want = sum(w * t for w, t in zip(weights, terms, strict=True)) / 4
        torch.testing.assert_close(lpl(pred, target), want, rtol=1e-5, atol=0)
        no_pqc = LatentPerceptualLoss(vae, norm="none", outliers=False, apply_post_quant_conv=False)
        assert not torch.allclose(no_pqc(pred, target), want, rtol=1e-3)


def test_vae_without_post_quant_conv_ignores_the_flag():
    vae = make_tiny_vae(0, post_quant_conv=False)
    pred, target = latents(size=16)
    with torch.no_grad():
        a = LatentPerceptualLoss(vae, apply_post_quant_conv=True)(pred, target)
        b = LatentPerceptualLoss(vae, apply_post_quant_conv=False)(pred, target)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dataset_norm_uses_the_stored_stats(vae):
    pred, target = latents()
    with torch.no_grad():
        none = LatentPerceptualLoss(vae, norm="none", outliers=False)(pred, target)
        # (f - mu) / sqrt(std^2 + eps): a constant shift cancels, std=2 divides mse by 4+eps
        ds = LatentPerceptualLoss(
            vae,
            norm="dataset",
            outliers=False,
            eps=1e-6,
            feature_stats=unit_stats([16, 16, 16, 8], 3.0, 2.0),
        )(pred, target)
    torch.testing.assert_close(ds, none / (4.0 + 1e-6), rtol=1e-5, atol=0)


def test_layer_weight_options_by_hand(vae):
    pred, target = latents()
    with torch.no_grad():
        lpl = LatentPerceptualLoss(vae, norm="l2", layer_weights="uniform")
        terms = lpl.layer_terms(pred, target)
        for kind, w in [
            ("uniform", [1, 1, 1, 1]),
            ("pow2", [1, 0.5, 0.25, 0.125]),
            ("upsampling", [1, 0.5, 0.25, 0.25]),
        ]:
            got = LatentPerceptualLoss(vae, norm="l2", layer_weights=kind)(pred, target)
            want = (terms * torch.tensor(w)).sum(1) / 4
            torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_checkpointing_changes_neither_value_nor_gradient(vae):
    pred, target = latents(size=16)
    results = []
    for ckpt in (False, True):
        p = pred.clone().requires_grad_()
        out = LatentPerceptualLoss(vae, grad_checkpointing=ckpt)(p, target)
        out.sum().backward()
        results.append((out.detach(), p.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_outlier_layer_selection_forms(vae):
    assert LatentPerceptualLoss(vae).outlier_sizes == {2: (1, 3), 3: (3, 5)}  # reference rule
    assert LatentPerceptualLoss(vae, outliers=False).outlier_sizes == {}
    # list: kernel sizes from resolution (decoder factor 4): layer 1 is 2x below full size
    assert LatentPerceptualLoss(vae, outliers=[1, 3]).outlier_sizes == {1: (1, 3), 3: (3, 5)}
    assert LatentPerceptualLoss(vae, outliers={0: 8}).outlier_sizes == {0: (1, 1)}
    with pytest.raises(ConfigError, match=r"\[5\]"):
        LatentPerceptualLoss(vae, outliers=[5])


class RowCounter:
    """Forward hook on decoder.conv_in: how many calls and rows the decoder saw."""

    def __init__(self, module):
        self.calls, self.rows = 0, 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1
        self.rows += args[0].shape[0]


@pytest.mark.parametrize("kind", ["bool", "index"])
def test_selection_runs_decoder_on_selected_rows_only(vae, kind):
    lpl = LatentPerceptualLoss(vae)
    pred, target = latents(b=4, size=16)
    with torch.no_grad():
        full = lpl(pred, target)
    sel = torch.tensor([False, True, False, True]) if kind == "bool" else torch.tensor([1, 3])
    counter = RowCounter(vae.decoder.conv_in)
    try:
        p = pred.clone().requires_grad_()
        out = lpl(p, target, select=sel)
        out.sum().backward()
    finally:
        counter.handle.remove()
    assert counter.calls == 2 and counter.rows == 4  # pred + target, 2 rows each
    assert out[0] == 0 and out[2] == 0
    torch.testing.assert_close(out[[1, 3]], full[[1, 3]])
    assert p.grad[[0, 2]].abs().sum() == 0 and p.grad[[1, 3]].abs().sum() > 0


@pytest.mark.parametrize(
    "sel", [torch.zeros(4, dtype=torch.bool), torch.zeros(0, dtype=torch.long)]
)
def test_empty_selection_does_no_decoder_work(vae, sel):
    lpl = LatentPerceptualLoss(vae)
    pred, target = latents(b=4)
    counter = RowCounter(vae.decoder.conv_in)
    try:
        out = lpl(pred, target, select=sel)
        gathered = lpl.forward_gathered(pred[:0], target[:0])
    finally:
        counter.handle.remove()
    assert counter.calls == 0
    assert torch.equal(out, torch.zeros(4)) and gathered.shape == (0,)


def test_duplicate_indices_count_once_in_value_and_gradient(vae):
    """Against an independent loop: each distinct selected row once, a weighted sum of the rows."""
    lpl = LatentPerceptualLoss(vae)
    pred, target = latents(b=4, size=16)
    w = torch.tensor([0.3, 1.7, -0.6, 2.2])  # distinct per-row weights expose a doubled gradient
    p = pred.clone().requires_grad_()
    out = lpl(p, target, select=torch.tensor([1, 3, 1, 1]))
    (out * w).sum().backward()
    q = pred.clone().requires_grad_()
    want = torch.zeros(4)
    total = 0.0
    for r in (1, 3):
        v = lpl.forward_gathered(q[r : r + 1], target[r : r + 1])[0]
        want[r] = v.detach()
        total = total + w[r] * v
    total.backward()
    torch.testing.assert_close(out.detach(), want, rtol=1e-5, atol=1e-8)
    # batched vs one-row convolutions differ by float rounding (~1e-8); a doubled gradient by 100%
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4 * q.grad.abs().max().item())


@pytest.mark.parametrize(
    "sel", [torch.zeros(4, dtype=torch.bool), torch.zeros(0, dtype=torch.long)]
)
def test_empty_selection_is_a_zero_connected_to_the_prediction(vae, sel):
    lpl = LatentPerceptualLoss(vae)
    pred, target = latents(b=4)
    p = pred.clone().requires_grad_()
    out = lpl(p, target, select=sel)
    assert out.grad_fn is not None and torch.equal(out.detach(), torch.zeros(4))
    out.sum().backward()  # a standalone backward works (the trainer's total may be only this)
    assert torch.equal(p.grad, torch.zeros_like(p))
    q = pred[:0].clone().requires_grad_()
    gathered = lpl.forward_gathered(q, target[:0])
    gathered.sum().backward()
    assert gathered.shape == (0,) and q.grad is not None


def test_forward_gathered_equals_selected_rows(vae):
    lpl = LatentPerceptualLoss(vae)
    pred, target = latents(b=4, size=16)
    with torch.no_grad():
        full = lpl(pred, target)
        torch.testing.assert_close(lpl.forward_gathered(pred[2:], target[2:]), full[2:])


def test_from_normalized_undoes_scale_and_shift(vae):
    lpl = LatentPerceptualLoss(vae, norm="l2")
    pred, target = latents(size=16)
    with torch.no_grad():
        # scalar: z_raw = z_n / 0.5 + 0.1
        want = lpl(pred / 0.5 + 0.1, target / 0.5 + 0.1)
        torch.testing.assert_close(lpl.from_normalized(pred, target, 0.5, 0.1), want)
        # per-channel tensors broadcast over (B, C, h, w) on channel
        scale, shift = torch.tensor([0.5, 1.0, 2.0, 4.0]), torch.tensor([0.0, 0.1, -0.2, 0.3])
        s, t = scale.view(1, 4, 1, 1), shift.view(1, 4, 1, 1)
        want = lpl(pred / s + t, target / s + t, select=torch.tensor([0, 2]))
        got = lpl.from_normalized(pred, target, scale, shift, select=torch.tensor([0, 2]))
        torch.testing.assert_close(got, want)


def test_forward_never_syncs_with_item(vae, monkeypatch):
    lpl = LatentPerceptualLoss(vae, grad_checkpointing=True)
    pred, target = latents(size=16)

    def no_item(self):
        raise AssertionError(".item() called in the LPL forward")

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    lpl(pred.requires_grad_(), target, select=torch.tensor([0, 2])).sum().backward()


SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
                      "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive"})  # fmt: skip


class HostSyncs(TorchDispatchMode):
    """Records the ops that make a GPU wait for the host, seen on any device (here the CPU): a
    scalar read (`.item()`, `bool(t)`, `float(t)`: aten._local_scalar_dense) and the ops whose
    output shape depends on the data (nonzero, masked_select, unique, bool-mask indexing)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        flat = [*args, *kwargs.values()]
        indices = [i for a in flat if isinstance(a, (list, tuple)) for i in a]
        if name in SYNC_OPS or (
            name.startswith("aten::index")
            and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
        ):
            self.ops.append(name)
        return func(*args, **kwargs)


@pytest.mark.parametrize("ckpt", [False, True])
def test_forward_and_backward_make_no_host_sync(vae, ckpt):
    """The CPU check behind docs/lpl.md's "no host sync" (the CUDA one below needs a GPU): with
    index selection, forward + backward make none of the ops that sync a GPU with its host. The
    same detector sees the documented sync of a bool `select` (nonzero) and of `.item()`."""
    lpl = LatentPerceptualLoss(vae, grad_checkpointing=ckpt)
    pred, target = latents(b=4, size=8)
    p = pred.clone().requires_grad_()
    with HostSyncs() as mode:
        lpl(p, target, select=torch.tensor([1, 3])).sum().backward()
        lpl(p, target, select=torch.tensor([], dtype=torch.long)).sum().backward()
        lpl.forward_gathered(p[:0], target[:0]).sum().backward()
    assert mode.ops == [] and p.grad is not None and p.grad.abs().sum() > 0
    with HostSyncs() as mode:
        lpl(p, target, select=torch.tensor([False, True, False, True]))
        p.sum().item()
    assert mode.ops == ["aten::nonzero", "aten::_local_scalar_dense"]


def test_bf16_autocast_keeps_loss_math_in_fp32(vae, monkeypatch):
    """Under bf16 autocast the decoder runs in bf16 and the loss math (norms, quantiles, masks,
    distances, layer sum) in fp32. Oracle: the same bf16 features, the loss math in float64
    (rtol 1e-4; fp32 math is ~1e-6 off, bf16 math -- or a loss computed in bf16 and cast at the
    end -- ~1e-2). The inputs of every normalization and distance are checked to be fp32 too."""
    from lplkit.lpl import loss as loss_module

    lpl = LatentPerceptualLoss(vae, "diffusers-reference")
    pred, target = latents(size=16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats = [lpl.taps(pred), lpl.taps(target)]  # the decoder's own bf16 features
    assert any(f.dtype == torch.bfloat16 for f in feats[0])  # (a residual add can promote)
    seen: list[torch.dtype] = []

    def spy(fn):
        def wrapped(*args, **kwargs):
            seen.extend(a.dtype for a in args if isinstance(a, torch.Tensor))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(loss_module, "normalize_pair", spy(loss_module.normalize_pair))
    monkeypatch.setattr(loss_module, "layer_distance", spy(loss_module.layer_distance))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = lpl(pred, target)
    assert out.dtype == torch.float32
    assert seen and set(seen) == {torch.float32}, set(seen)
    # oracle: the decoder replaced by its bf16 features in float64, outside autocast
    by_input = {pred.data_ptr(): feats[0], target.data_ptr(): feats[1]}
    monkeypatch.setattr(lpl.taps, "forward", lambda z: [f.double() for f in by_input[z.data_ptr()]])
    seen.clear()
    with torch.no_grad():
        want = lpl(pred, target)
    assert want.dtype == torch.float64 and set(seen) == {torch.float64}
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=0)


def test_presets_and_validation(vae):
    ref = resolve_lpl_config("diffusers-reference")
    assert (ref.norm, ref.layer_weights, ref.distance, ref.outliers) == (
        "l2-shared",
        "pow2",
        "mse",
        True,
    )
    assert ref.apply_post_quant_conv is False and ref.grad_checkpointing is True
    paper = resolve_lpl_config("paper", depth=2)
    assert paper.apply_post_quant_conv is True and paper.depth == 2
    assert paper.to_dict()["outliers"] is True
    assert len(LatentPerceptualLoss(vae, depth=1).layers) == 2
    for bad in [{"norm": "batch"}, {"layer_weights": "x"}, {"distance": "l3"}, {"outliers": "all"}]:
        with pytest.raises(ConfigError):
            resolve_lpl_config("paper", **bad)
    with pytest.raises(ConfigError, match="unknown LPL preset"):
        resolve_lpl_config("nope")
    with pytest.raises(ConfigError, match="unknown LPL option"):
        resolve_lpl_config("paper", num_blocks=4)
    with pytest.raises(ConfigError, match="feature_stats"):
        LatentPerceptualLoss(vae, norm="dataset")
    with pytest.raises(ConfigError, match="layer 3"):
        LatentPerceptualLoss(
            vae, norm="dataset", feature_stats={0: STATS[0], 1: STATS[1], 2: STATS[2]}
        )
    by_name = {
        info: STATS[i]
        for i, info in enumerate(["mid_block", "up_blocks.0", "up_blocks.1", "up_blocks.2"])
    }
    LatentPerceptualLoss(vae, norm="dataset", feature_stats=by_name)


@pytest.mark.gpu
def test_cuda_forward_backward_has_no_host_sync_and_matches_cpu(vae):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pred, target = latents(b=4, size=16)
    with torch.no_grad():
        want = LatentPerceptualLoss(vae)(pred, target, select=torch.tensor([1, 3]))
    vae_cuda = make_tiny_vae(0).cuda()
    lpl = LatentPerceptualLoss(vae_cuda, grad_checkpointing=True)
    p, t = pred.cuda().requires_grad_(), target.cuda()
    idx = torch.tensor([1, 3], device="cuda")
    lpl(p, t, select=idx).sum().backward()  # warm-up (lazy CUDA init may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = lpl(p, t, select=idx)
        out.sum().backward()
        empty = lpl(p, t, select=idx[:0])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), want, rtol=1e-4, atol=1e-7)
    assert torch.equal(empty.cpu(), torch.zeros(4))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        bf = lpl(p, t, select=idx)
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf.cpu(), want, rtol=0.1, atol=0)
