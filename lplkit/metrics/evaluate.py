"""`evaluate()`: compare generated samples with references by SWD, spectra and (optionally) FID,
and score them against their prompts (CLIP score, `lplkit.metrics.clip_score`).

Both sets are streamed batch by batch through every requested metric, so images are never all in
memory; SWD keeps its 7x7 descriptors (~75 kB per image per pyramid level, float32), FID keeps
2048-d features. Metric definitions live in `lplkit.metrics` (equations in their docstrings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lplkit.config import check_fields
from lplkit.errors import ConfigError, EvaluationError
from lplkit.metrics.clip_score import ClipScorer, find_prompts, prompts_for
from lplkit.metrics.config import EvalConfig
from lplkit.metrics.frechet import GaussianStats, frechet_distance
from lplkit.metrics.image_sets import ImageSet, NpzImages, open_image_set, select
from lplkit.metrics.inception import find_inception, inception_features, load_inception
from lplkit.metrics.spectrum import PowerSpectrum, spectrum_distance
from lplkit.metrics.swd import SWDConfig, SWDDescriptors, swd_between

METRICS = ("swd", "spectrum", "fid", "clip")
DEFAULT_METRICS = ("swd", "spectrum")
Progress = Callable[[str, int, int], None]  # (role, images done, images total)


@dataclass
class EvalOptions:
    """Everything `evaluate()` needs besides the two sets."""

    metrics: Sequence[str] = DEFAULT_METRICS
    n: int | None = None
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    inception: str | Path | None = None
    clip_model: str | None = None  # CLIPModel dir or cached hub id; adds "clip" to the metrics
    swd: SWDConfig = field(default_factory=SWDConfig)
    spectrum_mode: str = "gray"

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> EvalOptions:
        """The options of `lplkit eval`'s resolved config."""
        return cls(
            metrics=parse_metrics(cfg.metrics), n=cfg.n, seed=cfg.seed,
            batch_size=cfg.batch_size, device=cfg.device, inception=cfg.inception,
            clip_model=cfg.clip_model,
            swd=SWDConfig(dirs_per_repeat=cfg.swd_dirs, dir_repeats=cfg.swd_repeats),
            spectrum_mode=cfg.spectrum_mode,
        )  # fmt: skip


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """'swd,fid' -> ('swd', 'fid'); ConfigError naming the unknown ones."""
    names = [m.strip().lower() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise ConfigError(f"unknown metrics {unknown or names}: choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


class _SetAccumulator:
    """Feeds one image set's batches to the requested metrics."""

    def __init__(
        self,
        opts: EvalOptions,
        metrics: tuple[str, ...],
        inception: Any,
        clip: tuple[ClipScorer, list[str]] | None = None,
    ) -> None:
        self.clip = clip  # (scorer, the prompt of each image of the set)
        self.clip_scores: list[np.ndarray] = []
        self.swd = SWDDescriptors(opts.swd, seed=opts.seed) if "swd" in metrics else None
        self.spectrum = PowerSpectrum(opts.spectrum_mode) if "spectrum" in metrics else None
        self.inception = inception
        self.features: list[torch.Tensor] = []
        self.device = opts.device
        self.size: tuple[int, int] | None = None

    def update(self, images_NHWC: np.ndarray, indices: np.ndarray) -> None:
        if self.clip is not None:
            scorer, prompts = self.clip
            self.clip_scores.append(scorer.scores(images_NHWC, [prompts[i] for i in indices]))
        x = torch.from_numpy(np.ascontiguousarray(images_NHWC)).permute(0, 3, 1, 2)
        self.size = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.to(self.device)
        if self.swd is not None:
            self.swd.update(x)
        if self.spectrum is not None:
            self.spectrum.update(x)
        if self.inception is not None:
            self.features.append(inception_features(self.inception, x))


def _stream(
    images: ImageSet,
    indices: np.ndarray,
    acc: _SetAccumulator,
    batch_size: int,
    role: str,
    progress: Progress | None,
) -> None:
    for start in range(0, len(indices), batch_size):
        batch = indices[start : start + batch_size]
        acc.update(images.read(batch), batch)
        if progress is not None:
            progress(role, min(start + batch_size, len(indices)), len(indices))


def evaluate(
    samples: str | Path | ImageSet,
    ref: str | Path | ImageSet,
    options: EvalOptions | None = None,
    *,
    floor: str | Path | ImageSet | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Metrics of `samples` against `ref` as a JSON-serializable dict (see docs/evaluation.md).

    With `floor` (held-out real images, e.g. the test split's store, decoded by the same
    autoencoder), the same metrics of `floor` against `ref` are added as `result["floor"]`, over the
    same number of images as the samples (SWD depends on the set size), and `result["vs_floor"]`
    holds samples / floor per SWD level: 1.0 is as close to the references as real held-out data.
    """
    opts = options or EvalOptions()
    check_fields(EvalConfig, "eval", n=opts.n, seed=opts.seed, batch_size=opts.batch_size,
                 swd_dirs=opts.swd.dirs_per_repeat, swd_repeats=opts.swd.dir_repeats)  # fmt: skip
    metrics = parse_metrics(opts.metrics)
    if opts.clip_model and "clip" not in metrics:
        metrics = (*metrics, "clip")
    scorer = None
    if "clip" in metrics:  # weights and prompts checked before any decoding
        if not opts.clip_model:
            raise ConfigError(
                "--metrics clip needs --clip-model DIR_OR_ID (a CLIPModel and its CLIPProcessor)"
            )
        if not isinstance(samples, str | Path):
            raise ConfigError("the CLIP score needs the samples' path (its prompts.json)")
        find_prompts(samples)
        scorer = ClipScorer(opts.clip_model, opts.device)
    inception, inception_path = None, None
    if "fid" in metrics:  # fail before any decoding if the weights are missing
        inception_path = find_inception(opts.inception)
        inception = load_inception(inception_path, opts.device)
    named = [("samples", samples), ("ref", ref)] + ([("floor", floor)] if floor is not None else [])
    sets = {
        role: s if not isinstance(s, str | Path) else open_image_set(s, device=opts.device)
        for role, s in named
    }
    ref_stats = sets["ref"].fid_stats if isinstance(sets["ref"], NpzImages) else None
    n = opts.n
    if "floor" in sets:  # compare sets of one size: the smaller of samples and held-out images
        n = min(x for x in (n, len(sets["samples"]), len(sets["floor"])) if x is not None)
    result: dict[str, Any] = {"metrics": list(metrics), "seed": opts.seed}
    accs = {}
    for role, images in sets.items():
        use_inception = inception if not (role == "ref" and ref_stats is not None) else None
        role_metrics = tuple(m for m in metrics if m not in ("fid", "clip"))
        clip = None
        if role == "samples" and scorer is not None:
            clip = (scorer, prompts_for(images, samples))  # type: ignore[arg-type]
        if not role_metrics and use_inception is None and clip is None:
            result[role] = {"path": images.name, "n": 0}  # nothing to compute on this set
            accs[role] = _SetAccumulator(opts, (), None)
            continue
        if len(images) == 0 and (role_metrics != () or use_inception is not None):
            raise EvaluationError(f"{images.name}: no images to compute {', '.join(metrics)} from")
        role_n = opts.n if role == "ref" else n
        idx = select(len(images), role_n, opts.seed) if len(images) else np.arange(0)
        accs[role] = _SetAccumulator(opts, role_metrics, use_inception, clip)
        _stream(images, idx, accs[role], opts.batch_size, role, progress)
        result[role] = {"path": images.name, "n": len(idx)}
    result.update(_compare(accs["samples"], accs["ref"], metrics, opts, ref_stats, inception_path))
    if scorer is not None:
        s = np.concatenate(accs["samples"].clip_scores)
        result["clip"] = {
            "score": float(s.mean()),
            "n": int(s.size),
            "clamped": int((s == 0).sum()),  # pairs whose cosine was <= 0
            "model": str(opts.clip_model),
            "prompts": str(find_prompts(samples)),  # type: ignore[arg-type]
        }
    if "floor" in accs:
        floor_res = _compare(accs["floor"], accs["ref"], metrics, opts, ref_stats, inception_path)
        result["floor"].update(floor_res)
        if "swd" in floor_res:
            result["vs_floor"] = {
                level: result["swd"]["levels"][level] / value if value > 0 else None
                for level, value in floor_res["swd"]["levels"].items()
            }
    result["options"] = {
        k: v for k, v in asdict(opts).items() if k not in ("swd", "inception", "clip_model")
    }
    return result


def _compare(
    s: _SetAccumulator,
    r: _SetAccumulator,
    metrics: tuple[str, ...],
    opts: EvalOptions,
    ref_stats: Any,
    inception_path: Path | None,
) -> dict[str, Any]:
    """The requested metrics of one accumulated set against the references."""
    if (
        r.size is not None
        and s.size is not None
        and s.size != r.size
        and {"swd", "spectrum"} & set(metrics)
    ):
        raise EvaluationError(
            f"samples are {s.size[1]}x{s.size[0]} but references {r.size[1]}x{r.size[0]}: "
            "SWD and spectra need one resolution"
        )
    out: dict[str, Any] = {}
    if s.swd is not None and r.swd is not None:
        res = swd_between(
            s.swd.finalize(), r.swd.finalize(), s.swd.resolutions, opts.swd, seed=opts.seed
        )
        out["swd"] = res.as_dict()
    if s.spectrum is not None and r.spectrum is not None:
        out["spectrum"] = spectrum_distance(s.spectrum, r.spectrum).as_dict()
    if "fid" in metrics and inception_path is not None:
        out["fid"] = _fid(s, r, ref_stats, inception_path)
    return out


def _fid(s: _SetAccumulator, r: _SetAccumulator, ref_stats, inception_path: Path) -> dict:
    for acc, role in ((s, "samples"), (r, "references")):
        if acc.inception is not None and sum(len(f) for f in acc.features) < 2:
            raise EvaluationError(f"FID needs at least 2 {role} (thousands for a meaningful value)")
    gs = GaussianStats.from_features(torch.cat(s.features).numpy())
    if ref_stats is not None:
        gr, source = GaussianStats(mu=ref_stats[0], sigma=ref_stats[1]), "npz mu/sigma"
    else:
        gr, source = GaussianStats.from_features(torch.cat(r.features).numpy()), "images"
    if gr.mu.shape != gs.mu.shape or gr.sigma.shape != gs.sigma.shape:
        raise EvaluationError(
            f"reference mu/sigma have shapes {gr.mu.shape}/{gr.sigma.shape}, but the Inception "
            f"features are {gs.mu.shape[0]}-d: not pool3 statistics"
        )
    return {
        "value": frechet_distance(gs, gr),
        "ref_stats": source,
        "inception": str(inception_path),
    }
