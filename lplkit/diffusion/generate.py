"""Sampling from a run directory or a base: config + newest checkpoint -> images, grid, `.npz`.

    z ~ sampler(denoiser, objective) in the normalized space   (lplkit.diffusion.samplers: DDIM / Euler / Heun)
    z_raw = z / scale + shift                                  (run.json normalization)
    images = AE.decode(z_raw)                                  (clamped to [-1, 1])

Deterministic for a seed: all initial noise is drawn up front from one generator, so the result
does not depend on the batch size used to run the model. This is the sampler layer of the data
flow (above the trainer, below evaluation); `lplkit sample` renders it.

A text run (run.json ``text_encoders``) samples prompts instead of labels: image ``i`` gets prompt
``i mod P`` (``--n`` is the total, as labels are cycled), encoded with the run's recorded encoders
(`lplkit.diffusion.prompts`); guidance is against the empty caption's condition. Its grid carries
each image's prompt, and ``prompts.json`` lists the prompt of every image (`lplkit eval
--clip-model` reads it). ``--prompts-from-store STORE`` takes the captions of ``n`` rows of a
held-out store, drawn without replacement with ``--seed`` among its ok rows with a caption (all
of them, cycled, when it has fewer), in store order; the run's own training store is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lplkit.config import check_fields, from_dict
from lplkit.diffusion.image_files import (
    PROMPTS_FILE,
    save_captioned_grid,
    save_grid,
    save_npz,
    to_uint8,
)
from lplkit.diffusion.prompts import load_run_text_encoders, read_prompts_file
from lplkit.diffusion.sample_config import SampleConfig
from lplkit.diffusion.samplers import sample
from lplkit.distributed import resolve_device
from lplkit.errors import ConfigError
from lplkit.train.base import BUNDLED_BASES, base_dir, load_base, load_run_model
from lplkit.train.builders import load_decoder_vae, make_objective
from lplkit.train.config import TrainConfig
from lplkit.train.normalization import LatentNormalizer
from lplkit.train.previews import make_sample_grid  # noqa: F401  (old `lplkit.train.sampling` name)

__all__ = ["run_sizes", "sample_run", "store_prompts"]


def store_prompts(url: str, n: int, seed: int, run_info: dict[str, Any] | None = None) -> list[str]:
    """The captions of ``n`` rows of store ``url``: a seeded pick without replacement among its ok
    rows with a non-empty caption, in store order (all of them when it has fewer than ``n``).

    ``run_info`` (run.json) refuses the store the run was trained on: its captions are not
    held out."""
    from lplkit.stats.storage import store_content_hash
    from lplkit.store import LatentStore

    store = LatentStore.open(url)
    if run_info is not None:
        trained = (run_info.get("store") or {}).get("content_hash")
        if trained and store_content_hash(url, store.manifest) == trained:
            raise ConfigError(
                f"--prompts-from-store {url} is the store this run was trained on: pass a store of "
                "held-out rows (e.g. `lplkit encode --split test`)"
            )
    ok = np.asarray(store.ok_positions)
    captions = store.index_column("caption")
    have = [int(p) for p in ok if str(captions[int(p)].as_py() or "").strip()]
    if not have:
        raise ConfigError(f"--prompts-from-store {url}: no row has a caption")
    if len(have) > n:
        pick = np.random.default_rng(seed).choice(len(have), size=n, replace=False)
        have = [have[i] for i in sorted(pick.tolist())]
    return [str(captions[p].as_py()).strip() for p in have]


def _prompts(
    prompts: list[str] | None, prompts_file: str | None, store: str | None
) -> tuple[str, ...]:
    given = [f for f, v in (("--prompt", prompts), ("--prompts", prompts_file),
                            ("--prompts-from-store", store)) if v]  # fmt: skip
    if len(given) > 1:
        raise ConfigError(f"pass one of {', '.join(given)}, not several")
    return tuple(given)


def run_sizes(
    info: dict[str, Any], size: list[str] | None
) -> list[tuple[tuple[int, int], tuple[int, int, int]]]:
    """``[((W, H) pixels, (C, h, w) latents)]`` to sample: each asked ``"WxH"`` must be one of the
    run's buckets (run.json ``buckets``; a square run: its one size, from the latent shape and the
    autoencoder's downsampling factor), else a one-line `ConfigError` naming the sizes there are.
    None: the run's default latent shape."""
    from lplkit.store.buckets import parse_size

    c, h, w = (int(v) for v in info["latent_shape"])
    factor = int((info.get("store") or {}).get("autoencoder", {}).get("downsample_factor") or 0)
    if info.get("buckets"):
        have = {tuple(b["size"]): tuple(b["latent_shape"]) for b in info["buckets"]}
    elif factor:
        have = {(w * factor, h * factor): (c, h, w)}
    else:
        have = {}
    if not size:
        default = [s for s, shape in have.items() if shape == (c, h, w)]
        return [(default[0] if default else (w * max(factor, 1), h * max(factor, 1)), (c, h, w))]
    out = []
    for text in size:
        wh = parse_size(text)
        if wh not in have:
            names = ", ".join(f"{a}x{b}" for a, b in have) or "unknown (no autoencoder factor)"
            raise ConfigError(
                f"--size {text}: not a size this run trained on; its store has: {names}"
            )
        out.append((wh, have[wh]))
    return out


def sample_run(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    ema: bool = True,
    n: int = 16,
    steps: int = 50,
    guidance: float = 1.0,
    sampler: str | None = None,
    seed: int = 0,
    labels: list[int] | None = None,
    prompts: list[str] | None = None,
    prompts_file: str | None = None,
    prompts_from_store: str | None = None,
    batch_size: int = 32,
    device: str = "auto",
    vae: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    size: list[str] | None = None,
) -> dict[str, Any]:
    """Sample `n` images from the latest checkpoint of `run_dir`; returns a JSON-able summary.

    Class runs take `labels`; text runs one of `prompts`, `prompts_file`, `prompts_from_store`
    (module docstring).

    `size`: image sizes ``"WxH"`` (pixels), each one of the run's store buckets (a square run: its
    one size); `n` images per size, each size's noise drawn from its own `seed` generator (so a
    size's images do not depend on the other sizes asked for). Several sizes: `grid.png` has one
    row per size, every tile centred in a cell of the largest size (`make_mixed_grid`; prompts are
    then in `prompts.json` only), and `samples.npz` one array per size named ``WxH`` (one size:
    ``arr_0`` as always).
    """
    check_fields(
        SampleConfig, "sample", n=n, steps=steps, guidance=guidance, seed=seed,
        batch_size=batch_size, labels=labels,
    )  # fmt: skip
    prompt_flags = _prompts(prompts, prompts_file, prompts_from_store)
    if prompts is not None and not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ConfigError("--prompt: every prompt must be non-empty text")
    dev = resolve_device(device)
    if str(run_dir) in BUNDLED_BASES or (Path(run_dir) / "model.safetensors").is_file():
        # a base (bundled name or exported directory): run.json + weights, no config.json
        base = load_base(str(run_dir))
        info, step = base.info, base.step
        model = base.model
        tcfg = from_dict(TrainConfig, {"objective": info["objective"]})
        if str(run_dir) in BUNDLED_BASES:
            if out is None:
                raise ConfigError(f"sampling the bundled base {run_dir!r} needs --out DIR")
            run_dir = base_dir(str(run_dir))
        run_dir = Path(run_dir)
    else:
        run_dir = Path(run_dir)
        tcfg, info, model, step = load_run_model(run_dir, ema=ema)
    text_record = info.get("text_encoders")
    if text_record and labels is not None:
        raise ConfigError(
            f"--labels applies to class-conditional runs; {run_dir} is a text-to-image run: pass "
            "--prompt TEXT (repeatable), --prompts FILE or --prompts-from-store STORE"
        )
    if text_record and not prompt_flags:
        raise ConfigError(
            f"{run_dir} is a text-to-image run: pass --prompt TEXT (repeatable), --prompts FILE "
            "or --prompts-from-store STORE"
        )
    if not text_record and prompt_flags:
        raise ConfigError(
            f"{prompt_flags[0]} applies to text-to-image runs; {run_dir} is class-conditional: "
            "pass --labels (class ids) or nothing"
        )
    if info["num_classes"] and labels and max(labels) >= info["num_classes"]:
        raise ConfigError(
            f"--labels: class {max(labels)} is out of range; this run has {info['num_classes']} "
            f"classes (0..{info['num_classes'] - 1})"
        )
    shapes = run_sizes(info, size)  # refused here, before anything is loaded or written
    model = model.to(dev).eval()
    objective = make_objective(tcfg)
    normalizer = LatentNormalizer.from_record(info["normalization"])
    if vae is not None:
        tcfg.lpl.vae = vae
    ae: Any = load_decoder_vae(tcfg, {"autoencoder": info["store"]["autoencoder"]}, dev)

    num_classes = info["num_classes"]
    if labels is not None and len(labels) != n:
        labels = [labels[i % len(labels)] for i in range(n)]
    y_all = None
    if num_classes:
        y_all = torch.tensor(labels) if labels is not None else torch.arange(n) % num_classes
    per_image: list[str] | None = None
    cond = null = None
    if text_record:
        if prompts_from_store:
            given = store_prompts(prompts_from_store, n, seed, info)
        else:
            given = list(prompts) if prompts else read_prompts_file(str(prompts_file))
        per_image = [given[i % len(given)] for i in range(n)]
        encoders = load_run_text_encoders(info, dev)
        distinct = list(dict.fromkeys(per_image))
        rows = torch.tensor([distinct.index(p) for p in per_image])
        cond = {k: v[rows] for k, v in encoders.encode(distinct).items()}
        null = encoders.encode([""]) if guidance != 1.0 else None
    groups: list[torch.Tensor] = []
    for k, (_, shape) in enumerate(shapes):
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *shape), generator=gen)
        images = []
        for lo in range(0, n, batch_size):
            hi = min(n, lo + batch_size)
            y = None if y_all is None else y_all[lo:hi].to(dev)
            text = None if cond is None else {k: v[lo:hi] for k, v in cond.items()}
            z = sample(model, objective, (hi - lo, *shape), labels=y, text=text, null_text=null,
                       steps=steps, guidance=guidance, sampler=sampler,  # type: ignore[arg-type]
                       noise=noise[lo:hi].to(dev), device=dev)  # fmt: skip
            with torch.no_grad():
                decoded = ae.decode(normalizer.unnormalize(z)).sample
                images.append(decoded.clamp(-1, 1).float().cpu())
            if progress is not None:
                progress(k * n + hi, n * len(shapes))
        groups.append(torch.cat(images))
    out_dir = Path(out) if out is not None else run_dir / "samples" / f"step_{step or 0:08d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    # One PNG per sample in images/ (so `lplkit eval --samples OUT/images` sees only samples), the
    # grid and the npz beside it.
    (out_dir / "images").mkdir(exist_ok=True)
    for i, arr in enumerate(a for g in groups for a in to_uint8(g)):
        Image.fromarray(arr).save(out_dir / "images" / f"{i:06d}.png")
    names = [f"{w}x{h}" for (w, h), _ in shapes]
    if len(groups) > 1:
        grid = save_grid(groups, out_dir / "grid.png")  # one row per size
        npz = save_npz(dict(zip(names, groups, strict=True)), out_dir / "samples.npz")
    else:
        npz = save_npz(groups[0], out_dir / "samples.npz")
        if per_image is None:
            grid = save_grid(groups[0], out_dir / "grid.png")
        else:
            grid = save_captioned_grid(groups[0], per_image, out_dir / "grid.png")
    if per_image is not None:
        total = n * len(groups)
        record = {"prompts": per_image * len(groups),
                  "images": [f"images/{i:06d}.png" for i in range(total)],
                  "source": prompt_flags[0].lstrip("-")}  # fmt: skip
        if prompts_from_store:
            record["store"] = str(prompts_from_store)
        (out_dir / PROMPTS_FILE).write_text(json.dumps(record, indent=1))
    return {
        "run_dir": str(run_dir),
        "checkpoint_step": step,
        "weights": "ema" if ema else "model",
        "n": n,
        "sampler": sampler or ("heun" if tcfg.objective.kind == "flow" else "ddim"),
        "steps": steps,
        "cfg": guidance,  # the --json key the CLI has always written
        "seed": seed,
        "labels": None if y_all is None else y_all.tolist(),
        "sizes": names,
        "prompts": per_image,
        "out": str(out_dir),
        "images": str(out_dir / "images"),
        "grid": str(grid),
        "npz": str(npz),
        **({"prompts_json": str(out_dir / PROMPTS_FILE)} if per_image is not None else {}),
    }
