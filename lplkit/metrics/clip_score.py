"""CLIP score of generated images against their prompts, with the user's own CLIP weights.

For image ``x_i`` sampled from prompt ``c_i`` (Hessel et al. 2021, CLIPScore; torchmetrics' scale):

    s_i = 100 * max(cos(E_I(x_i), E_T(c_i)), 0)          CLIP score = (1/N) sum_i s_i

``E_I`` / ``E_T``: a `transformers` ``CLIPModel``'s projected image / text embeddings; the images
go through the checkpoint's own ``CLIPProcessor`` (resize, center crop, normalize), the prompts
through its tokenizer, padded and truncated to the text model's positions (77 for OpenAI's CLIP).

Relation to the other definitions: Hessel's CLIP-S uses ``w = 2.5`` where this uses 100 (CLIP-S =
score / 40). torchmetrics' ``clip_score`` clamps the *mean* cosine instead of each pair's
(``max(100 mean_i cos_i, 0)``); the two agree whenever no pair's cosine is negative, the usual
case for a trained CLIP, and differ only for nearly unrelated image/prompt pairs, where the
per-pair clamp (Hessel's) does not let one unrelated pair cancel a related one. torchmetrics also
cuts tokens beyond the model's positions after padding (dropping the end-of-text token); the
tokenizer's truncation here keeps it.

The weights are only the user's, as FID's Inception: ``--clip-model DIR`` (``save_pretrained``
of a ``CLIPModel`` and its ``CLIPProcessor``) or a hub id read from the local hub cache, never
downloaded (e.g. ``openai/clip-vit-large-patch14``, torchmetrics' default, or
``openai/clip-vit-base-patch16``). Scores from different CLIP models are not comparable.

The prompts of a samples folder or ``.npz`` are the ``prompts.json`` that `lplkit sample` writes
beside them (``{"prompts": [...], "images": ["images/000000.png", ...]}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lplkit.diffusion.image_files import PROMPTS_FILE
from lplkit.errors import EvaluationError

__all__ = ["ClipScorer", "find_prompts", "load_clip", "prompts_for"]


def _folder(spec: str) -> Path:
    """A local directory, or the local hub cache's snapshot of hub id `spec` (offline)."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import snapshot_download

    from lplkit.hub import hub_cache_dir

    try:
        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # not cached (or not a hub id): one line below
        raise EvaluationError(
            f"--clip-model {spec}: neither a directory nor a model in the local hub cache "
            f"({hub_cache_dir()}); download it once with network access (`hf download {spec}`) "
            "or pass a directory holding a CLIPModel and its CLIPProcessor"
        ) from None


def load_clip(spec: str, device: str | torch.device = "cpu") -> tuple[Any, Any, Path]:
    """``(CLIPModel (eval, fp32), CLIPProcessor, folder)`` of `spec` (module docstring)."""
    import transformers

    folder = _folder(spec)
    try:
        model = transformers.CLIPModel.from_pretrained(folder)
        processor = transformers.CLIPProcessor.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        raise EvaluationError(
            f"--clip-model {spec}: cannot load a CLIPModel and its CLIPProcessor from {folder} "
            f"({' '.join(str(exc).split())[:200]})"
        ) from None
    model = model.to(device)  # type: ignore[arg-type]
    return model.eval().requires_grad_(False), processor, folder


class ClipScorer:
    """Per-image scores ``s_i`` (module docstring) of uint8 images and their prompts."""

    def __init__(self, spec: str, device: str | torch.device = "cpu") -> None:
        self.model, self.processor, self.folder = load_clip(spec, device)
        self.spec = spec
        self.device = device
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def scores(self, images_NHWC: np.ndarray, prompts: list[str]) -> np.ndarray:
        """``s_i`` (float64, in [0, 100]) for uint8 ``(N, H, W, 3)`` images and N prompts."""
        if len(prompts) != len(images_NHWC):
            raise EvaluationError(f"{len(images_NHWC)} images but {len(prompts)} prompts")
        pixels = self.processor.image_processor(
            images=list(np.asarray(images_NHWC)), return_tensors="pt"
        )["pixel_values"]
        tokens = self.processor.tokenizer(list(prompts), padding=True, truncation=True,
                                          max_length=self.max_tokens, return_tensors="pt")  # fmt: skip
        out = self.model(input_ids=tokens["input_ids"].to(self.device),
                         attention_mask=tokens["attention_mask"].to(self.device),
                         pixel_values=pixels.to(self.device))  # fmt: skip
        # CLIPModel returns both embeddings L2-normalized: their dot product is the cosine
        cos = (out.image_embeds.double() * out.text_embeds.double()).sum(-1)
        return (100.0 * cos.clamp(min=0.0)).cpu().numpy()


def find_prompts(samples: str | Path) -> Path:
    """The ``prompts.json`` of a samples folder (in it or its parent: `lplkit sample` writes
    OUT/images/ and OUT/prompts.json) or ``.npz`` (beside it)."""
    p = Path(samples)
    places = (
        [p / PROMPTS_FILE, p.parent / PROMPTS_FILE] if p.is_dir() else [p.parent / PROMPTS_FILE]
    )
    for place in places:
        if place.is_file():
            return place
    raise EvaluationError(
        f"the CLIP score needs the prompt of each sample: no {PROMPTS_FILE} in "
        f"{' or '.join(str(x.parent) for x in places)} (`lplkit sample --prompt ...` writes it)"
    )


def prompts_for(images: Any, samples: str | Path) -> list[str]:
    """The prompt of each image of set `images` (opened from `samples`), by file name for a
    folder (``prompts.json`` ``images`` paths are relative to it), by index for an ``.npz``."""
    path = find_prompts(samples)
    try:
        record = json.loads(path.read_text())
        prompts = [str(p) for p in record["prompts"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvaluationError(f"{path} is not a prompts file of `lplkit sample` ({exc})") from None
    files = getattr(images, "files", None)
    if files is None:  # an .npz: row i is image i
        if len(prompts) != len(images):
            raise EvaluationError(f"{path} lists {len(prompts)} prompts for {len(images)} images")
        return prompts
    names = record.get("images") or []
    if len(names) != len(prompts):
        raise EvaluationError(f"{path}: 'images' and 'prompts' differ in length")
    by_file = {(path.parent / n).resolve(): p for n, p in zip(names, prompts, strict=True)}
    missing = [f for f in files if Path(f).resolve() not in by_file]
    if missing:
        raise EvaluationError(f"{path} lists no prompt for {missing[0]} ({len(missing)} images)")
    return [by_file[Path(f).resolve()] for f in files]
