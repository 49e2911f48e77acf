"""The training loop with text-to-image models on a captioned store caching tiny CLIP encoders:
caption dropout row by row (against the uniform draw recomputed here and the cached tensors combined
by hand), bitwise resume (weights, EMA, metrics), every objective, bf16/fp16 autocast."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.standins import RUN_ID

from lplkit.train.builders import build_components
from lplkit.train.config import TrainConfig
from lplkit.train.loop import Trainer
from lplkit.train.metrics_log import TIMING_FIELDS, read_metrics
from lplkit.train.rng import Stream, derive_seed

CPU = torch.device("cpu")


def _cfg(store, model: str, **kw) -> TrainConfig:
    cfg = TrainConfig(store=str(store), steps=kw.pop("steps", 2), batch_size=8, seed=3)
    cfg.model.name = model
    cfg.model.caption_dropout = kw.pop("caption_dropout", 0.1)
    cfg.model.text_encoder = kw.pop("text_encoder", [])
    cfg.objective.kind = kw.pop("objective", "flow")
    cfg.optim.lr = 1e-3
    cfg.ema_decay = 0.9
    cfg.log.every, cfg.log.tensorboard, cfg.ckpt.every = 2, False, 3
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def _trainer(cfg: TrainConfig, run_dir, **kw) -> Trainer:
    return Trainer(cfg, build_components(cfg, CPU), run_dir, run_id=RUN_ID, **kw)


def _losses(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
            for r in read_metrics(run_dir / "metrics.jsonl")]  # fmt: skip


def _text_arg(args, kwargs):
    return args[3] if len(args) > 3 else kwargs.get("text")


def test_caption_dropout_replaces_exactly_the_drawn_rows(text_store, tmp_path):
    """Two CLIP encoders (SD3's pair): the model sees, per row, the loader's cached states
    (concatenated along features), mask and pooled vectors, or where the step's LABEL_DROP uniform
    draw is below caption_dropout the store's empty caption's: those rows and no others."""
    store = text_store("clip", "clip2")
    rate = 0.4
    tr = _trainer(
        _cfg(store, "MMDiT-T/2", caption_dropout=rate, text_encoder=["clip", "clip2"]),
        tmp_path / "run",
    )
    loaded, seen = [], []
    next_batch = tr.cursor.next

    def record_batch():
        out = next_batch()
        loaded.append(out[2])
        return out

    tr.cursor.next = record_batch  # type: ignore[method-assign]
    tr.model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(_text_arg(args, kwargs)), with_kwargs=True
    )
    tr.run()
    assert len(seen) == 2 and len(loaded) == 2  # one micro-batch per step
    empty = {n: tr.parts.store.empty_text(n) for n in ("clip", "clip2")}
    n_drop = 0
    for step, (batch, got) in enumerate(zip(loaded, seen, strict=True)):
        g = torch.Generator().manual_seed(derive_seed(3, step, Stream.LABEL_DROP))
        drop = torch.rand(8, generator=g) < rate
        n_drop += int(drop.sum())
        for i in range(8):
            src = {n: {k: v[0] for k, v in empty[n].items()} for n in empty} if drop[i] else {
                n: {k: v[i] for k, v in batch[n].items()} for n in batch
            }  # fmt: skip
            a, b = src["clip"], src["clip2"]
            torch.testing.assert_close(got["states"][i], torch.cat([a["states"], b["states"]], -1),
                                       rtol=0, atol=0)  # fmt: skip
            torch.testing.assert_close(got["pooled"][i], torch.cat([a["pooled"], b["pooled"]], -1),
                                       rtol=0, atol=0)  # fmt: skip
            assert torch.equal(got["mask"][i].bool(), a["mask"].bool() | b["mask"].bool())
        # the loader's rows differ from the empty caption: a dropped row is visible
        assert not torch.equal(batch["clip"]["states"][0], empty["clip"]["states"][0])
    assert 0 < n_drop < 16, n_drop


def test_text_run_resumes_bitwise(text_store, tmp_path):
    """Killed after step 4 (checkpoint at 3), re-run: weights, EMA and metrics equal an
    uninterrupted run's, bit for bit (loader position, caption-dropout draws, RNG)."""

    def cfg():
        return _cfg(text_store("clip"), "PixArt-T/2", steps=6, caption_dropout=0.3)

    ref = _trainer(cfg(), tmp_path / "ref")
    ref.run()

    class Killed(Exception):
        pass

    def die(step):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        _trainer(cfg(), tmp_path / "run", on_step=die).run()
    resumed = _trainer(cfg(), tmp_path / "run")
    assert resumed.run().resumed_from == 3
    for k, v in ref.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    for k, v in ref.ema.weights().items():
        assert torch.equal(resumed.ema.weights()[k], v), k
    assert _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    assert [r["step"] for r in _losses(tmp_path / "ref")] == [2, 4, 6]


@pytest.mark.parametrize(
    "objective,model", [("eps", "UNetText-T"), ("v", "MMDiT-T/2"), ("flow", "PixArt-T/2")]
)
def test_every_objective_trains_a_text_model(text_store, tmp_path, objective, model):
    tr = _trainer(_cfg(text_store("clip"), model, objective=objective), tmp_path / "run")
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.run()
    recs = _losses(tmp_path / "run")
    assert recs and all(math.isfinite(r["loss"]) and r["nan_skips"] == 0 for r in recs)
    moved = [k for k, v in tr.model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 2
    ema = tr.ema.weights()
    assert any(not torch.equal(ema[k], tr.model.state_dict()[k]) for k in moved)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_text_model_trains_under_autocast(text_store, tmp_path, precision):
    """CPU autocast: the denoiser's output is in the autocast dtype, the losses finite; fp16 with
    its gradient scaler."""
    tr = _trainer(_cfg(text_store("clip"), "MMDiT-T/2", **{precision: True}), tmp_path / "run")
    dtypes = []
    tr.model.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    tr.run()
    want = torch.bfloat16 if precision == "bf16" else torch.float16
    assert dtypes and set(dtypes) == {want}
    assert all(math.isfinite(r["loss"]) for r in _losses(tmp_path / "run"))
    assert tr.scaler.is_enabled() == (precision == "fp16")
