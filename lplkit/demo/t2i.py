"""The text-to-image demo's own stages (``lplkit demo --task t2i``, run by `lplkit.demo.run`).

Stages (files under ``OUT/t2i/``):

1. ``encode``: OpenMoji train and held-out test glyphs at ``res`` (32) px through the bundled
   ``tiny-openmoji`` AE (4 x 8 x 8 latents), captioned with their lower-cased Unicode names and
   encoded by the bundled ``openmoji-clip`` text encoder (``sd-clip`` preset, 16 tokens: the
   settings of the bundled base's recipe, pipelines/openmoji-t2i/pretrain.toml);
2. ``stats``: as the class demo;
3. ``train``: the bundled text-to-image base (``openmoji-t2i-base``) post-trained twice from the
   same seed (same batches, timesteps, noise and caption drops): ``baseline`` (``L_diff``) and
   ``lpl`` (``L_diff + w LPL`` with the SNR gate);
4. ``sample``: both arms' EMA weights from the same noise for (a) the held-out captions, row ``i``
   = the test store's row ``i`` (cycled to ``n_samples``; unnamed glyphs get the empty caption as
   in training), and (b) the picture's prompts x ``PICTURE_COLUMNS`` noise draws (column ``j``
   uses noise row ``j`` for every prompt);
5. ``eval``: SWD per level and spectrum of (a) against the train store, next to the floor
   (held-out glyphs against the same store);
6. ``adherence``: of (a)'s samples whose prompt's name family exists in train, the fraction whose
   nearest training glyph (pixel L2, train store decoded by the AE) is of the prompt's family,
   against shuffled prompts (`lplkit.demo.adherence`);
7. ``compare``: one picture, a row per prompt: baseline | LPL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lplkit.demo.adherence import adherence, nearest, qualifying
from lplkit.demo.config import ARMS, DemoConfig
from lplkit.demo.prompt_sampling import sample_prompts
from lplkit.diffusion.image_files import save_grid, save_npz

__all__ = [
    "FIXED_PROMPTS",
    "PICTURE_COLUMNS",
    "adherence_of",
    "adherence_stage",
    "compare_stage",
    "sample_stage",
    "store_captions",
    "train_references",
]

#: The picture's default prompts: names of held-out (test split) glyphs whose name family has
#: training glyphs (tests/unit/demo/test_t2i_prompts.py checks both).
FIXED_PROMPTS: tuple[str, ...] = (
    "alarm clock",
    "tiger face",
    "beating heart",
    "last quarter moon symbol",
    "white chess queen",
    "maple leaf",
    "rabbit",
    "earth globe europe-africa",
)
PICTURE_COLUMNS = 4  # noise draws per prompt and arm


def store_captions(store: str | Path) -> list[str]:
    """The captions of a store's ok rows, in row order ("" where the glyph has no name)."""
    from lplkit.store import LatentStore

    s = LatentStore.open(str(store))
    captions = s.index_column("caption").to_pylist()
    return [str(captions[int(p)] or "") for p in s.ok_positions]


def eval_prompts(cfg: DemoConfig) -> list[str]:
    """The held-out captions, cycled to ``n_samples`` (sample ``i`` mirrors test row ``i``)."""
    held_out = store_captions(cfg.test_store)
    return [held_out[i % len(held_out)] for i in range(cfg.n_samples)]


def sample_stage(cfg: DemoConfig) -> dict[str, Any]:
    evals = eval_prompts(cfg)
    prompts = list(cfg.prompts) or list(FIXED_PROMPTS)
    picture = [p for p in prompts for _ in range(PICTURE_COLUMNS)]
    columns = [j for _ in prompts for j in range(PICTURE_COLUMNS)]
    sampler = "euler" if cfg.objective == "flow" else None
    kw: dict[str, Any] = dict(seed=cfg.seed, steps=cfg.sample_steps, guidance=cfg.guidance,
                              sampler=sampler, device=cfg.device)  # fmt: skip
    out: dict[str, Any] = {"prompts": prompts, "eval_prompts": evals}
    for arm in ARMS:
        folder = cfg.root / "samples" / arm
        folder.mkdir(parents=True, exist_ok=True)
        images = sample_prompts(cfg.run_dir(arm), evals, **kw)
        pics = sample_prompts(cfg.run_dir(arm), picture, noise_rows=columns, **kw)
        npz = save_npz(images, folder / "samples.npz")
        pic_npz = save_npz(pics, folder / "prompts.npz")
        grid = save_grid(pics, folder / "prompts.png", nrow=PICTURE_COLUMNS)
        out[arm] = {
            "n": len(images),
            "sampler": sampler or "ddim",
            "steps": cfg.sample_steps,
            "cfg": cfg.guidance,
            "seed": cfg.seed,
            "out": str(folder),
            "npz": str(npz),
            "prompts_npz": str(pic_npz),
            "grid": str(grid),
        }
    return out


def train_references(store: str | Path, device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """The train store's glyphs decoded by its AE (uint8 NHWC) and their names, in row order."""
    from lplkit.metrics.image_sets import open_store_images

    images = open_store_images(str(store), device=device)
    arr = np.concatenate(
        [images.read(np.arange(i, min(i + 256, len(images)))) for i in range(0, len(images), 256)]
    )
    return arr, store_captions(store)


def adherence_of(
    samples: np.ndarray, prompts: list[str], refs: np.ndarray, ref_names: list[str]
) -> dict[str, Any]:
    """`adherence` of the samples whose prompt qualifies (its family exists among ``ref_names``)."""
    keep = set(qualifying(prompts, ref_names))
    rows = np.array([i for i, p in enumerate(prompts) if p in keep], dtype=np.int64)
    if not len(rows):
        return {"n": 0, "hits": 0, "adherence": None, "chance_pairs": 0, "chance_hits": 0,
                "chance": None, "qualifying_prompts": 0}  # fmt: skip
    nn = nearest(samples[rows], refs)
    res = adherence([prompts[i] for i in rows], [ref_names[k] for k in nn])
    res["qualifying_prompts"] = len(keep)
    return res


def adherence_stage(cfg: DemoConfig, samples: dict[str, Any]) -> dict[str, Any]:
    refs, names = train_references(cfg.store, cfg.device)
    prompts = samples["eval_prompts"]
    out: dict[str, Any] = {}
    for arm in ARMS:
        arr = np.load(samples[arm]["npz"])["arr_0"]
        out[arm] = adherence_of(arr, prompts, refs, names)
    return out


def compare_stage(cfg: DemoConfig, samples: dict[str, Any]) -> dict[str, Any]:
    """A row per prompt: its text, the baseline's images, the LPL arm's (same noise per column)."""
    from PIL import Image, ImageDraw

    prompts = samples["prompts"]
    arms = {arm: np.load(samples[arm]["prompts_npz"])["arr_0"] for arm in ARMS}
    h, w = arms["lpl"].shape[1:3]
    scale = max(1, 64 // h)  # 32 px glyphs shown at 64 px
    cell, gap, text_w, title_h = h * scale + 2, 12, 190, 18
    block = PICTURE_COLUMNS * cell
    width = text_w + 2 * block + 3 * gap
    height = title_h + len(prompts) * cell + 2 * gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for a, title in enumerate(("baseline", "LPL")):
        draw.text((text_w + gap + a * (block + gap), gap // 2), title, fill="black")
    for r, prompt in enumerate(prompts):
        y = title_h + gap // 2 + r * cell
        draw.text((gap // 2, y + cell // 2 - 6), prompt[:30], fill="black")
        for a, arm in enumerate(ARMS):
            for j in range(PICTURE_COLUMNS):
                img = Image.fromarray(arms[arm][r * PICTURE_COLUMNS + j])
                img = img.resize((w * scale, h * scale), Image.Resampling.NEAREST)
                canvas.paste(img, (text_w + gap + a * (block + gap) + j * cell, y))
    path = cfg.root / "compare.png"
    tmp = path.with_suffix(".tmp.png")
    canvas.save(tmp)
    tmp.replace(path)
    return {"picture": str(path), "prompts": len(prompts), "columns": PICTURE_COLUMNS}
