"""The training loop: resume, step (objective + gated LPL + accumulation + NaN guard), EMA, log, save.

Step k (k = optimizer steps done so far, skipped ones included):
  1. timesteps t, noise eps and label-drop mask for the *global* batch from generators seeded by
     (seed, k); torch's global RNG is reseeded from (seed, k, rank) for anything else. eps is
     drawn for the shape of the step's latents (a bucketed store's shape changes per batch).
  2. each rank runs `grad_accum` micro-batches of b = B / (world_size * grad_accum) samples from its
     loader share, taking slice (m * world_size + rank) of the global random draws;
     DDP averages gradients, so the update equals the 1-process update with the same global batch.
  3. gradient norm (clipped when `grad_clip > 0`); a non-finite norm skips the update and counts it
     (with fp16 the loss is scaled by a `GradScaler`, unscaled before the norm; an overflow skips
     the step the same way and lowers the scale).
  4. AdamW step, LR schedule (`lplkit.train.lr_schedule`: warm-up, constant/cosine/linear), EMA.
The step's losses go to the metrics window (`lplkit.train.metrics_window`: the log sums and the
skip-streak rule); rank 0 writes its record to `metrics.jsonl` every `log.every` steps, and the
checkpointer (`lplkit.train.checkpoint.Checkpointer`, built with the run id) checkpoints every
`ckpt.every` steps. The logged `lr` is the one step k's optimizer update used (read before the
scheduler advances). `Trainer.run` is the loop itself, read top to bottom.

On SIGTERM or SIGUSR1 (`lplkit.preemption`) the step in flight finishes, every rank agrees to stop
after it (one all-reduced flag per step), rank 0 checkpoints it and every rank raises `Preempted`;
Ctrl-C raises `Interrupted` at once, naming the last checkpoint (no checkpoint is written).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lplkit.config import to_dict
from lplkit.diffusion import text_conditioning as tc
from lplkit.diffusion.objectives import Objective
from lplkit.distributed import DistInfo, barrier
from lplkit.errors import Interrupted, Preempted, TrainingError
from lplkit.preemption import StopRequest, stop_agreed, stop_signals
from lplkit.train.checkpoint import Checkpoint, Checkpointer
from lplkit.train.config import TrainConfig
from lplkit.train.ema import EMA
from lplkit.train.loader import LoaderCursor
from lplkit.train.losses import LplFn, micro_batch_loss
from lplkit.train.lr_schedule import lr_lambda
from lplkit.train.metrics_log import MetricsLog
from lplkit.train.metrics_window import MetricsWindow
from lplkit.train.normalization import LatentNormalizer
from lplkit.train.rng import (
    Stream,
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    step_generator,
)


@dataclass
class Components:
    """What the loop trains with; `build_components` makes the real ones, tests pass stand-ins."""

    model: nn.Module
    objective: Objective
    normalizer: LatentNormalizer
    store: Any  # has .batches(batch_size, *, seed, shuffle, epoch, start_batch, rank, world_size)
    latent_shape: tuple[int, int, int]  # (C, h, w)
    null_label: int | None = None  # CFG null class id; None = no label dropout
    conditional: bool = False
    lpl: LplFn | None = None
    sample_grid: Callable[[nn.Module, int, Path], Path] | None = None  # (ema model, step, dir)
    # what run.json records (None when tests pass stand-ins)
    num_classes: int | None = None
    model_spec: dict[str, Any] | None = None  # kwargs that rebuild the model (models.build_model)
    init: dict[str, Any] | None = None  # the --init base: {"spec", "source", "step"}
    # text models: the store's cached encoders read, their families, the empty caption's
    # combined condition (caption dropout) and what run.json records of each encoder
    text_names: list[str] | None = None
    text_families: list[str] | None = None
    empty_text: dict[str, Tensor] | None = None
    text_record: list[dict[str, Any]] | None = None
    # a bucketed store's buckets (Bucket.to_dict); latent_shape is then the default sampling one
    buckets: list[dict[str, Any]] | None = None


@dataclass
class TrainResult:
    step: int
    images_seen: int
    resumed_from: int | None
    nan_skips: int
    last_metrics: dict[str, Any] | None
    run_dir: Path


class Trainer:
    """Owns the optimizer, scheduler, EMA and loader cursor; its checkpointer (the run's
    checkpoints, under its run id) and metrics window (loss sums, skip-streak rule) own their
    policies.

    Args:
        run_dir: the run directory (checkpoints/, metrics.jsonl, samples/).
        run_id: the run's id (`run.json`), recorded in every checkpoint: rotation and resume touch
            only this run's.
        on_log: called with each metrics record (rank 0).
        on_step: called after each step with the step count (every rank).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        parts: Components,
        run_dir: Path,
        dist: DistInfo | None = None,
        *,
        run_id: str,
        on_log: Callable[[dict[str, Any]], None] | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.parts = parts
        self.run_dir = Path(run_dir)
        self.dist = dist or DistInfo()
        self.on_log = on_log
        self.on_step = on_step
        self.device = self.dist.device
        self.model = parts.model.to(self.device).train()
        self.micro = cfg.per_rank_micro_batch(self.dist.world_size)
        o = cfg.optim
        self.opt = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=o.lr,
            betas=(o.betas[0], o.betas[1]),
            weight_decay=o.weight_decay,
            eps=o.eps,
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lr_lambda(o.schedule, o.warmup_steps, o.decay_steps or cfg.steps, o.min_lr_ratio),
        )
        # fp16 gradients underflow without loss scaling; disabled it is a no-op pass-through
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.fp16)
        self.ema = EMA(self.model, cfg.ema_decay, warmup=cfg.ema_warmup)
        self.step = 0
        self.step_lr = self.opt.param_groups[0]["lr"]  # the LR the last optimizer step used
        self.checkpointer = Checkpointer(self.run_dir, run_id, every=cfg.ckpt.every,
                                         keep_last=cfg.ckpt.keep_last, is_main=self.dist.is_main)  # fmt: skip
        self.window = MetricsWindow(every=cfg.log.every, lpl_weight=cfg.lpl.weight,
                                    device=self.device, dist=self.dist)  # fmt: skip
        self.cursor = LoaderCursor(
            parts.store,
            self.micro,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            text=parts.text_names or None,
        )
        fwd: nn.Module = torch.compile(self.model) if cfg.compile else self.model  # type: ignore[assignment]
        if self.dist.enabled:
            ids = [self.device] if self.device.type == "cuda" else None
            fwd = DistributedDataParallel(fwd, device_ids=ids)
        self.fwd = fwd
        self.resumed_from: int | None = None
        self._prefetched: tuple[int, list] | None = None
        self._pos_before_prefetch: dict[str, int] = self.cursor.position

    # ----------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything but the weights, as plain tensors/dicts (loaded with weights_only=True)."""
        return {
            "step": self.step,
            "images_seen": self.step * self.cfg.batch_size,
            "nan_skips": self.window.nan_skips,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict(),
            "rng": capture_rng_state(),
            "loader": self._pos_before_prefetch if self._prefetched else self.cursor.position,
            "log_acc": self.window.state_dict(),
        }

    def load_state_dict(self, found: Checkpoint) -> None:
        """Restore a checkpoint (`state_dict` + the weights) into this trainer."""
        s = found.state
        self.model.load_state_dict(found.model)
        self.ema.load_state_dict(s["ema"], found.ema)
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])  # a disabled scaler (no fp16) ignores it
        restore_rng_state(s["rng"])
        self.step = int(s["step"])
        self.cursor.epoch = int(s["loader"]["epoch"])
        self.cursor.batch = int(s["loader"]["batch"])
        self.window.load_state_dict(s["log_acc"], int(s["nan_skips"]))
        self._prefetched = None

    def _checkpoint_contents(self) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Any]]:
        return self.model.state_dict(), self.ema.weights(), self.state_dict()

    def save(self) -> Path | None:
        """Checkpoint the current step (rank 0 writes it; returns its directory there)."""
        return self.checkpointer.save(self.step, self._checkpoint_contents)

    def resume(self) -> int | None:
        """Load this run's newest valid checkpoint if any; returns its step."""
        found = self.checkpointer.load_latest(map_location="cpu")
        if found is None:
            return None
        self.load_state_dict(found)
        self.resumed_from = self.step
        return self.step

    # ----------------------------------------------------------------------------- step
    def _global_draws(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """t (B,), conditioning-drop mask (B,), LPL crop draws (B, 2) for the global batch of
        `step` (the crop draws are used only with `lpl.loss.crop`). The drop mask is one uniform
        draw per row below `label_dropout` (class models) or `caption_dropout` (text models)."""
        B, seed = self.cfg.batch_size, self.cfg.seed
        t = self.parts.objective.sample_timesteps(B, step_generator(seed, step, Stream.TIMESTEP))
        drop = torch.rand(B, generator=step_generator(seed, step, Stream.LABEL_DROP))
        crop_u = torch.rand(B, 2, generator=step_generator(seed, step, Stream.LPL_CROP))
        rate = (
            self.cfg.model.caption_dropout
            if self.parts.text_names
            else self.cfg.model.label_dropout
        )
        return t, drop < rate, crop_u

    def _global_noise(self, step: int, shape: tuple[int, ...]) -> Tensor:
        """eps (B, C, h, w) of the global batch of `step` for latents of `shape` (C, h, w): a
        bucketed store's batches differ in shape from step to step (and, with `grad_accum`, from
        micro-batch to micro-batch), so eps is drawn for the shape at hand, always from the same
        (seed, step) generator; a micro-batch takes its slice of it."""
        gen = step_generator(self.cfg.seed, step, Stream.NOISE)
        return torch.randn((self.cfg.batch_size, *shape), generator=gen)

    def _lpl_active(self) -> bool:
        return (
            self.parts.lpl is not None
            and self.cfg.lpl.enabled
            and self.step >= self.cfg.lpl.start_step
        )

    def _prepare(self, step: int) -> list[tuple[Any, ...]]:
        """Host work of step `step`: loader batches and this rank's slices of the global draws,
        copied to the device. Returns [(latents, labels, t, eps, drop, crop_u, text)] per
        micro-step (`text`: the combined condition of a text model's batch, else None)."""
        dist, dev = self.dist, self.device
        t_all, drop_all, crop_all = self._global_draws(step)
        eps_of: dict[tuple[int, ...], Tensor] = {}  # one draw per latent shape in this step
        out: list[tuple[Any, ...]] = []
        for m in range(self.cfg.grad_accum):
            latents, labels, text = self.cursor.next()
            shape = tuple(latents.shape[1:])
            if shape not in eps_of:
                eps_of[shape] = self._global_noise(step, shape)
            eps_all = eps_of[shape]
            cond = None
            if text is not None:
                names, fams = self.parts.text_names or [], self.parts.text_families or []
                cond = tc.to_device(
                    tc.combine([(f, text[n]) for n, f in zip(names, fams, strict=True)]), dev
                )
            lo = (m * dist.world_size + dist.rank) * self.micro
            sl = slice(lo, lo + self.micro)
            nb = dev.type == "cuda"
            out.append(
                (
                    latents.to(dev, torch.float32, non_blocking=nb),
                    labels.to(dev, non_blocking=nb),
                    t_all[sl].to(dev, non_blocking=nb),
                    eps_all[sl].to(dev, non_blocking=nb),
                    drop_all[sl].to(dev, non_blocking=nb),
                    crop_all[sl],  # stays on the host: the crop offsets are computed there
                    cond,
                )
            )
        return out

    def _prefetch_next(self) -> None:
        """Queue the next step's host work while the device still runs this step's backward
        (the NaN guard syncs right after). The checkpointed loader position stays the one before
        the prefetch, so resume is unaffected."""
        if self.step + 1 < self.cfg.steps and self._prefetched is None:
            self._pos_before_prefetch = self.cursor.position
            self._prefetched = (self.step + 1, self._prepare(self.step + 1))

    def train_step(self) -> None:
        """One optimizer step over `grad_accum` micro-batches (see module docstring)."""
        cfg, dist = self.cfg, self.dist
        torch.manual_seed(derive_seed(cfg.seed, self.step, Stream.GLOBAL, dist.rank))
        if self._prefetched is not None and self._prefetched[0] == self.step:
            batches = self._prefetched[1]
        else:
            batches = self._prepare(self.step)
        self._prefetched = None
        lpl_on = self._lpl_active()
        crops = cfg.lpl.loss is not None and cfg.lpl.loss.crop is not None
        for m, (latents, labels, t, eps, drop, crop_u, cond) in enumerate(batches):
            z0 = self.parts.normalizer.normalize(latents)
            y = self._labels(labels, drop)
            if cond is not None and self.parts.empty_text is not None:
                cond = tc.drop_captions(cond, self.parts.empty_text, drop)
            gate = weight = None
            if lpl_on:
                gate = self.parts.objective.gate(
                    t, snr_min=cfg.lpl.snr_min, max_timestep=cfg.lpl.max_timestep
                )
                if cfg.lpl.snr_weighting == "min-snr":
                    weight = self.parts.objective.min_snr_weight(t, cfg.lpl.snr_gamma)
            last = m == cfg.grad_accum - 1
            sync = nullcontext() if (last or not dist.enabled) else self.fwd.no_sync()  # type: ignore[operator]
            with sync:
                parts = micro_batch_loss(
                    self.fwd,
                    self.parts.objective,
                    z0,
                    y,
                    eps,
                    t,
                    normalizer=self.parts.normalizer,
                    lpl=self.parts.lpl if lpl_on else None,
                    lpl_weight=cfg.lpl.weight,
                    gate=gate,
                    lpl_sample_weight=weight,
                    lpl_crop_u=crop_u if crops else None,
                    text=cond,
                    bf16=cfg.bf16,
                    fp16=cfg.fp16,
                )
                self.scaler.scale(parts.total / cfg.grad_accum).backward()
            self.window.add(parts)
        self._prefetch_next()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        self.step_lr = self.opt.param_groups[0]["lr"]  # this step's; sched.step() sets the next
        self.scaler.unscale_(self.opt)  # no-op unless fp16
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        applied = bool(torch.isfinite(norm))  # the same on all ranks: DDP averaged the gradients
        if applied:
            self.scaler.step(self.opt)  # = opt.step() (the norm is finite, so no inf was found)
            self.ema.update(self.model)
        self.window.end_step(applied=applied, images=cfg.batch_size)
        self.scaler.update()  # fp16: halve the scale after an overflow, grow it after a streak
        self.opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # The LR is a function of the step count, skipped steps included (a skipped first
            # step, e.g. an fp16 overflow, makes torch warn about the call order; nothing is lost).
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.sched.step()
        self.step += 1

    def _labels(self, labels: Tensor, drop: Tensor) -> Tensor | None:
        if not self.parts.conditional or self.parts.text_names:
            return None
        y = labels.to(self.device, torch.long)
        if self.parts.null_label is not None:
            y = torch.where(drop.to(self.device), self.parts.null_label, y)
        return y

    # ----------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        """Resume if possible, train to `cfg.steps`, log and checkpoint; returns a summary."""
        cfg, dist = self.cfg, self.dist
        self.resume()
        log = (
            MetricsLog(
                self.run_dir / "metrics.jsonl",
                resume_step=self.step,
                tensorboard=cfg.log.tensorboard,
                wandb_project=cfg.log.wandb_project if cfg.log.wandb else None,
                config=to_dict(cfg),
            )
            if dist.is_main
            else None
        )
        self.last_metrics: dict[str, Any] | None = None
        self.window.begin(self.step)
        try:
            with stop_signals() as stop:
                while self.step < cfg.steps:
                    # Train one step.
                    self.train_step()
                    done = self.step == cfg.steps

                    # Log the window; stop when it skipped too many steps (skip-streak rule).
                    if self.window.due(self.step, done):
                        diverged = self.window.diverged(self.step, done)
                        record = self.last_metrics = self.window.close(
                            step=self.step,
                            images_seen=self.step * cfg.batch_size,
                            epoch=self.cursor.epoch,
                            lr=self.step_lr,
                        )
                        if log is not None:  # rank 0
                            log.write(record)
                            if self.on_log is not None:
                                self.on_log(record)
                        if diverged is not None:
                            raise TrainingError(diverged)

                    # Checkpoint.
                    if self.checkpointer.due(self.step, done):
                        self.save()

                    # Sample a grid from the EMA model.
                    sample_every = cfg.log.sample_every
                    if (
                        self.parts.sample_grid is not None
                        and sample_every > 0
                        and self.step % sample_every == 0
                        and dist.is_main
                    ):
                        self.parts.sample_grid(self.ema.model, self.step, self.run_dir / "samples")
                    if self.on_step is not None:
                        self.on_step(self.step)

                    # Preempted: every rank stops after the same step (a finished run just ends).
                    if not done and stop_agreed(stop, dist):
                        self._preempt(stop)
        except Interrupted:
            raise
        except KeyboardInterrupt as exc:
            raise Interrupted(self._interrupt_message()) from exc
        finally:
            if log is not None:
                log.close()
        return TrainResult(
            step=self.step,
            images_seen=self.step * cfg.batch_size,
            resumed_from=self.resumed_from,
            nan_skips=self.window.nan_skips,
            last_metrics=self.last_metrics,
            run_dir=self.run_dir,
        )

    def _interrupt_message(self) -> str:
        head = f"train interrupted after step {self.step} of {self.cfg.steps}"
        saved = self.checkpointer.saved_step
        if saved is None:
            return f"{head}: no checkpoint yet; re-run the same command to start again"
        return (
            f"{head}: the last checkpoint is step {saved}; re-run the same command to resume "
            "from it"
        )

    def _preempt(self, stop: StopRequest) -> None:
        """Every rank agreed to stop after step `self.step`: checkpoint it (rank 0), wait for that
        write on every rank (a rank that exits first makes torchrun signal the others), stop."""
        if self.checkpointer.saved_step != self.step:
            self.save()
        barrier(self.dist)
        raise Preempted(
            f"train preempted by {stop.name} after step {self.step} of {self.cfg.steps}: "
            f"checkpoint step_{self.step:08d} written; re-run the same command to resume"
        )
