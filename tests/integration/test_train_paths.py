"""`lplkit train` / `lplkit sample` paths beyond the plain run (issue #29): two gloo ranks with the
LPL, `--bf16`, `--compile`, and `sample --no-ema` / `--ema` against a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from helpers.ranks import run_forked_ranks
from helpers.stores import write_exact_store
from safetensors.torch import load_file

from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics


@pytest.fixture(scope="module")
def exact_store(tmp_path_factory, tiny_vae_dir) -> Path:
    return write_exact_store(tmp_path_factory.mktemp("exact") / "s.zarr", tiny_vae_dir)


def _train_args(store: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--store", str(store), "--out", str(out), "--model", "DiT-T/2",
            "--batch-size", "8", "--lr", "1e-3", "--seed", "1", "--device", "cpu", *extra]  # fmt: skip


def _cli(args: list[str]) -> int:
    return run_cli(args)[0]


def _losses(run: Path) -> list[dict]:
    recs = read_metrics(run / "metrics.jsonl")
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in recs]


def _ckpt(run: Path, step: int, name: str = "model") -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"step_{step:08d}" / f"{name}.safetensors")


def test_two_gloo_ranks_with_the_lpl_equal_one_process(exact_store, tmp_path):
    """Global batch 8 = 1 x 8 = 2 ranks x 4, LPL gated at SNR >= 0.5 (some rows in, some out).

    Tolerance: the ranks all-reduce (average) their gradients where one process sums the batch in
    another order, ~1e-7 relative; Adam divides by sqrt(v), so after 3 steps of lr 1e-3 the
    weights differ by up to ~2e-6, and by ~1.2e-5 on the attention key biases (their true gradient
    is 0: softmax ignores a key bias, so Adam scales rounding noise up to a step). atol 5e-5 is 5%
    of one Adam step (lr): a rank that divides its LPL sum by its own gated count (not the global
    batch) or gates other samples moves weights by a whole step. Losses: rel 1e-6 (seen: 1e-8).
    """
    steps = 3
    one = _train_args(exact_store, tmp_path / "one", "--steps", str(steps), "--log-every", "1",
                      "--lpl", "--lpl-depth", "1", "--lpl-snr-min", "0.5",
                      "--set", "model.label_dropout=0.3")  # fmt: skip
    assert _cli(one) == 0
    two = [a.replace(str(tmp_path / "one"), str(tmp_path / "two")) for a in one]
    assert run_forked_ranks(lambda rank: _cli(two)) == [0, 0]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2
    for name in ("model", "ema"):
        w1, w2 = _ckpt(tmp_path / "one", steps, name), _ckpt(tmp_path / "two", steps, name)
        assert w1.keys() == w2.keys()
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=5e-5, msg=f"{name} {k}")
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert [r["step"] for r in l1] == [r["step"] for r in l2] == [1, 2, 3]
    assert any(r["loss_lpl"] > 0 for r in l1) and any(r["gate_frac"] < 1 for r in l1)
    for a, b in zip(l1, l2, strict=True):
        for k in ("loss", "loss_diffusion", "loss_lpl", "gate_frac"):
            assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k


def _sample_oracle(run: Path, step: int, weights: str, vae_dir: Path, n: int, seed: int):
    """`lplkit sample` computed directly: the checkpoint's weights file loaded into a fresh DiT,
    the objective's default sampler, the run's normalization undone, the tiny VAE's decoder."""
    from diffusers import AutoencoderKL

    from lplkit.diffusion.denoisers import build_model
    from lplkit.diffusion.image_files import to_uint8
    from lplkit.diffusion.objectives import build_objective
    from lplkit.diffusion.samplers import sample

    info = json.loads((run / "run.json").read_text())
    model = build_model("DiT-T/2", in_channels=4, sample_size=8, num_classes=3)
    model.load_state_dict(_ckpt(run, step, weights))
    noise = torch.randn((n, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    z = sample(model.eval(), build_objective("flow"), (n, 4, 8, 8), labels=torch.arange(n) % 3,
               steps=2, noise=noise)  # fmt: skip
    nrm = info["normalization"]
    shift = torch.tensor(nrm["shift"]).view(1, -1, 1, 1)
    scale = torch.tensor(nrm["scale"]).view(1, -1, 1, 1)
    with torch.no_grad():
        img = AutoencoderKL.from_pretrained(vae_dir).eval().decode(z / scale + shift).sample
    return to_uint8(img.clamp(-1, 1))


def test_sample_no_ema_uses_the_raw_weights_and_ema_the_ema_ones(exact_store, tiny_vae_dir,
                                                                  tmp_path, capsys):  # fmt: skip
    run = tmp_path / "run"
    assert _cli(_train_args(exact_store, run, "--steps", "3", "--ema-decay", "0.5")) == 0
    raw, ema = _ckpt(run, 3, "model"), _ckpt(run, 3, "ema")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # two different weight sets
    for flag, weights in (("--no-ema", "model"), ("--ema", "ema")):
        out = tmp_path / weights
        capsys.readouterr()
        code = run_cli(["sample", "--run", str(run), flag, "--n", "3", "--steps", "2", "--seed",
                        "7", "--out", str(out), "--device", "cpu", "--json"], capsys)[0]  # fmt: skip
        assert code == 0
        got = np.load(out / "samples.npz")["arr_0"]
        want = _sample_oracle(run, 3, weights, tiny_vae_dir, n=3, seed=7)
        other = _sample_oracle(run, 3, "ema" if weights == "model" else "model", tiny_vae_dir, 3, 7)
        # uint8 after float math in another order: at most 1 level apart
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, flag
        assert np.abs(got.astype(int) - other.astype(int)).max() > 1, flag


@pytest.fixture
def aot_eager(monkeypatch):
    """`torch.compile` as lplkit calls it, on the aot_eager backend: dynamo's graph capture and
    AOTAutograd's forward/backward graphs (what makes a compiled run differ from eager) without
    inductor's C++ code generation (minutes per graph on a CPU). Fresh dynamo state."""
    from torch._dynamo.utils import counters

    real = torch.compile

    def compile_aot_eager(fn, *, options=None, backend=None, **kw):
        return real(fn, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def test_train_compile_and_the_compiled_lpl_equal_eager(exact_store, tmp_path, aot_eager):
    """`train --compile --lpl-compile` (the denoiser and the LPL each one compiled graph) against the
    same run in eager mode. Tolerance as in the two-rank test: the graphs reorder float math
    (~1e-7 relative), which Adam turns into at most ~1e-5 of a weight after 2 steps."""
    steps = 2
    eager = _train_args(exact_store, tmp_path / "eager", "--steps", str(steps), "--log-every",
                        "1", "--lpl", "--lpl-depth", "0", "--lpl-snr-min", "0.5")  # fmt: skip
    assert _cli(eager) == 0
    compiled = [a.replace(str(tmp_path / "eager"), str(tmp_path / "compiled")) for a in eager]
    assert _cli([*compiled, "--compile", "--lpl-compile"]) == 0
    assert aot_eager["stats"]["unique_graphs"] >= 2  # the denoiser and the LPL went through dynamo
    cfg = json.loads((tmp_path / "compiled" / "config.json").read_text())
    assert cfg["compile"] is True and cfg["lpl"]["loss"]["compile"] is True
    w0, w1 = _ckpt(tmp_path / "eager", steps), _ckpt(tmp_path / "compiled", steps)
    assert w0.keys() == w1.keys()  # saved without the compiled wrapper's `_orig_mod.` prefix
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=0, atol=5e-5, msg=k)
    l0, l1 = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert any(r["loss_lpl"] > 0 for r in l0)
    for a, b in zip(l0, l1, strict=True):
        for k in ("loss", "loss_diffusion", "loss_lpl", "gate_frac"):
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-9), k
