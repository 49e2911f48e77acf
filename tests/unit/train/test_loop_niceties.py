"""LR schedules (against diffusers.optimization), TensorBoard (read back with tensorboard's own
reader), the notice when it is missing, W&B in offline mode, fp16 with torch's GradScaler."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from helpers.standins import tiny_components

from lplkit.errors import ConfigError
from lplkit.train.config import TrainConfig
from lplkit.train.loop import Trainer
from lplkit.train.lr_schedule import lr_lambda
from lplkit.train.metrics_log import TIMING_FIELDS, MetricsLog, read_metrics


def _cfg(**kw) -> TrainConfig:
    cfg = TrainConfig(steps=kw.pop("steps", 6), batch_size=8, seed=3)
    cfg.optim.lr = 1e-3
    cfg.log.every = 2
    cfg.log.tensorboard = False
    cfg.ckpt.every = 3
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_decay_after_warmup_matches_diffusers(name):
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = get_scheduler(name, opt, num_warmup_steps=5, num_training_steps=40).lr_lambdas[0]
    f = lr_lambda(name, 5, 40)
    for k in range(5, 41):
        assert f(k) == pytest.approx(ref(k), abs=1e-12), k
    assert f(41) == f(100) == 0.0  # held at the end (diffusers' cosine would rise again)
    assert [f(k) for k in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]  # (k + 1) / W, by hand


def test_constant_and_min_ratio_by_hand():
    assert [lr_lambda("constant", 0, 10)(k) for k in (0, 9, 100)] == [1.0, 1.0, 1.0]
    cos = lr_lambda("cosine", 0, 10, min_lr_ratio=0.1)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.55) and cos(10) == cos(99) == 0.1
    lin = lr_lambda("linear", 2, 12, min_lr_ratio=0.5)
    assert lin(2) == 1.0 and lin(7) == pytest.approx(0.75) and lin(12) == 0.5
    with pytest.raises(ConfigError, match="unknown LR schedule"):
        lr_lambda("step", 0, 10)


def test_trainer_follows_and_records_the_schedule(tmp_path):
    cfg = _cfg(steps=6)
    cfg.log.every = 1
    cfg.optim.schedule = "cosine"
    cfg.optim.warmup_steps = 2
    Trainer(cfg, tiny_components(), tmp_path).run()
    f = lr_lambda("cosine", 2, 6)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert lrs == pytest.approx([1e-3 * f(k) for k in range(6)])  # the LR step k+1's update used


def test_tensorboard_mirrors_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg()
    cfg.log.tensorboard = True
    Trainer(cfg, tiny_components(), tmp_path).run()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    for rec in read_metrics(tmp_path / "metrics.jsonl"):
        for key in ("loss", "loss_diffusion", "lr"):
            (ev,) = [e for e in acc.Scalars(key) if e.step == rec["step"]]
            assert ev.value == pytest.approx(rec[key], rel=1e-6)


def test_missing_tensorboard_is_a_notice(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    with pytest.warns(UserWarning, match="tensorboard is not installed") as caught:
        MetricsLog(tmp_path / "metrics.jsonl", resume_step=0, tensorboard=True).close()
    from lplkit.cli import output

    w = caught[0]
    output.show_warning(w.message, w.category, w.filename, w.lineno)  # what the CLI prints
    err = capsys.readouterr().err
    assert err.startswith("warning: log.tensorboard is on") and err.count("\n") == 1


def test_wandb_offline_logs_and_resumes_the_same_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rec = {"step": 2, "loss": 0.5, "lr": 1e-3, "note": "x"}
    log = MetricsLog(tmp_path / "metrics.jsonl", resume_step=0, tensorboard=False,
                     wandb_project="lplkit-test", config={"optim": {"lr": 1e-3}})  # fmt: skip
    run = log._wandb
    calls = []
    real_log = run.log
    run.log = lambda data, step: (calls.append((data, step)), real_log(data, step=step))
    log.write(rec)
    assert run.offline and run.config["optim"]["lr"] == 1e-3
    assert calls == [({"loss": 0.5, "lr": 1e-3}, 2)]  # numbers only, at the record's step
    log.close()
    run_id = (tmp_path / "wandb-run-id").read_text().strip()
    again = MetricsLog(tmp_path / "metrics.jsonl", resume_step=2, tensorboard=False,
                       wandb_project="lplkit-test")  # fmt: skip
    assert again._wandb.id == run_id  # a resumed run directory continues the same W&B run
    again.close()
    # the offline record file exists; its content is flushed by wandb's service process at its
    # own pace (even after finish/teardown), so it is not read back here
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_wandb_requested_but_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pip install 'lplkit\[wandb\]'"):
        MetricsLog(tmp_path / "m.jsonl", resume_step=0, tensorboard=False, wandb_project="p")


def test_fp16_trains_scaled_and_resumes_bitwise(tmp_path):
    ref = Trainer(_cfg(fp16=True), tiny_components(), tmp_path / "ref")
    ref.run()
    assert ref.scaler.is_enabled() and ref.scaler.get_scale() > 1
    recs = [{k: v for k, v in r.items() if k not in TIMING_FIELDS}
            for r in read_metrics(tmp_path / "ref" / "metrics.jsonl")]  # fmt: skip
    assert all(math.isfinite(r["loss"]) for r in recs)
    state = torch.load(tmp_path / "ref" / "checkpoints" / "step_00000006" / "state.pt",
                       weights_only=True)  # fmt: skip
    assert state["scaler"]["scale"] == ref.scaler.get_scale()

    class Killed(Exception):
        pass

    def die(step):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        Trainer(_cfg(fp16=True), tiny_components(), tmp_path / "run", on_step=die).run()
    resumed = Trainer(_cfg(fp16=True), tiny_components(), tmp_path / "run")
    assert resumed.run().resumed_from == 3
    for k, v in ref.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


def test_fp16_overflow_skips_the_step_and_lowers_the_scale(tmp_path):
    tr = Trainer(_cfg(fp16=True), tiny_components(), tmp_path)
    tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # scaled grads overflow
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.train_step()
    assert tr.nan_skips == 1 and tr.scaler.get_scale() == 2.0**126  # torch's backoff 0.5
    assert all(torch.equal(tr.model.state_dict()[k], v) for k, v in before.items())


def test_bf16_and_fp16_are_exclusive():
    with pytest.raises(ConfigError, match="exclusive"):
        _cfg(bf16=True, fp16=True).validate()


def test_schedule_flag_and_record(tmp_path):
    from lplkit.cli.train import resolve_argv

    cfg = resolve_argv(["--store", "s", "--out", str(tmp_path / "r"), "--lr-schedule", "linear",
                        "--fp16", "--wandb", "--warmup", "3"])  # fmt: skip
    assert cfg.optim.schedule == "linear" and cfg.fp16 and cfg.log.wandb
    from lplkit.config import to_dict

    assert json.loads(json.dumps(to_dict(cfg)))["optim"]["schedule"] == "linear"
