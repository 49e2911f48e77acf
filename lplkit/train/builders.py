"""Build the trainer's components from a `TrainConfig`: store, denoiser, objective, normalizer, LPL.

Everything comes from the store: latent shape, labels (class-conditional when any ok sample has a
label >= 0), the normalization (store stats when `lplkit stats` ran, else the autoencoder's factors)
and the autoencoder the LPL decodes with (`lpl.vae` overrides the manifest's).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import nn

from lplkit.autoencoders.loading import (
    autoencoder_info,
    check_store_autoencoder,
    config_hash,
    load_autoencoder,
    weights_hash,
)
from lplkit.diffusion import text_conditioning as tc
from lplkit.diffusion.denoisers import build_model, is_text_model
from lplkit.diffusion.objectives import Objective, build_objective
from lplkit.diffusion.patch_grid import base_sample_size, check_grid, grid_multiple
from lplkit.errors import ConfigError, StoreMismatchError
from lplkit.lpl.config import LPLConfig
from lplkit.lpl.decoder_taps import DecoderTaps
from lplkit.lpl.loss import LatentPerceptualLoss
from lplkit.stats.storage import load_stats
from lplkit.store.reader import LatentStore
from lplkit.store.verify import require_sound_store
from lplkit.train.base import load_base
from lplkit.train.config import TrainConfig
from lplkit.train.loop import Components
from lplkit.train.normalization import LatentNormalizer
from lplkit.train.pipeline_init import init_from_pipeline, is_pipeline_spec
from lplkit.train.previews import make_sample_grid, preview_text


def make_objective(cfg: TrainConfig) -> Objective:
    o = cfg.objective
    if o.kind == "flow":
        return build_objective("flow", time_sampling=o.time_sampling)
    return build_objective(
        o.kind, beta_schedule=o.schedule, num_train_timesteps=o.num_train_timesteps
    )


def text_setup(cfg: TrainConfig, store: Any, text_model: bool) -> tuple[list[str], list[str], Any]:
    """The cached encoders a text model reads: ``(names, families, empty caption condition)``.

    Refuses, in one line naming what to pass, a text model on a store without cached text, a
    class model given ``--text-encoder``, and a captioned store without labels given to a class
    model (it would silently train unconditionally)."""
    names = list(cfg.model.text_encoder)
    have = store.text_encoders
    url = str(getattr(store, "url", cfg.store))
    if not text_model:
        if names:
            raise ConfigError(
                f"--text-encoder applies to text-to-image models (PixArt-*, MMDiT-*, UNetText-*); "
                f"--model {cfg.model.name} is class-conditional"
            )
        if have and store_num_classes(store) is None:
            raise ConfigError(
                f"{url} has no class labels but caches text encoder(s) {', '.join(have)}: pass a "
                "text-to-image model (--model PixArt-S/2, MMDiT-S/2 or UNetText-S)"
            )
        return [], [], None
    if not have:
        raise ConfigError(
            f"--model {cfg.model.name} is a text-to-image model but {url} caches no text encoder: "
            f"add one with `lplkit encode-text {url} --text-encoder SPEC`, or pass a class model "
            "(--model DiT-S/2)"
        )
    if not names:
        if len(have) > 1:
            raise ConfigError(
                f"{url} caches several text encoders ({', '.join(have)}): pass --text-encoder "
                "NAME (repeat it to combine them as SD3 does)"
            )
        names = list(have)
    store.text_names(names)  # one line naming the missing ones
    families = [str(have[n].get("family", "clip")) for n in names]
    # a bucketed store caches the text per bucket; the empty caption's encoding is every bucket's
    first = store.bucket_view(0)
    empty = tc.combine([(f, first.empty_text(n)) for n, f in zip(names, families, strict=True)])
    return names, families, empty


def store_num_classes(store: Any) -> int | None:
    """Number of classes (max label + 1) over the ok samples, None when unlabeled."""
    labels = np.asarray(store.labels)[np.asarray(store.ok_positions)]
    return int(labels.max()) + 1 if labels.size and labels.max() >= 0 else None


#: A bucketed store's transformer is built for a square side that is a multiple of this (every
#: DiT patch size and U-Net depth lplkit registers divides it): `patch_grid.base_sample_size`.
BASE_MULTIPLE = 8


def bucketed_sample_size(model: str, grids: list[tuple[int, int]]) -> int:
    """The square side a model is built with to run at every bucket grid ``(h, w)``: MMDiT (SD3's
    transformer) crops its position table of ``sample_size / 2`` patches, so it needs the longest
    side of any bucket; the others run at any grid and get the side of the largest bucket area
    (`lplkit.diffusion.patch_grid`), both rounded to a multiple of `BASE_MULTIPLE`."""
    if model.startswith("MMDiT"):
        side = max(max(g) for g in grids)
        return -(-side // BASE_MULTIPLE) * BASE_MULTIPLE
    return base_sample_size(grids, BASE_MULTIPLE)


def default_latent_shape(store: Any) -> tuple[int, int, int]:
    """The latent shape a run samples at by default: a square store's; for a bucketed store the
    bucket with the most rows (ties: the squarest, then the lowest id)."""

    def rank(b: Any) -> tuple[int, float, int]:
        _, h, w = b.latent_shape
        return (b.rows, -abs(math.log(h / w)), -b.id)

    best = max(store.buckets, key=rank)
    c, h, w = (int(v) for v in best.latent_shape)
    return c, h, w


def make_normalizer(store: Any) -> LatentNormalizer:
    """Store statistics when present, else the autoencoder's scaling/shift factors."""

    stats = load_stats(store)
    if stats is not None:
        return LatentNormalizer.from_stats(stats.latent_mean.tolist(), stats.latent_std.tolist())
    channels = int(store.buckets[0].latent_shape[0])  # per channel: the same in every bucket
    return LatentNormalizer.from_autoencoder(store.manifest.get("autoencoder", {}), channels)


def autoencoder_spec(cfg: TrainConfig, manifest: dict[str, Any]) -> tuple[str, str | None]:
    """The AE to decode with: `lpl.vae` if set, else the store manifest's."""
    if cfg.lpl.vae:
        return cfg.lpl.vae, cfg.lpl.vae_subfolder
    ae = manifest.get("autoencoder", {})
    if not ae.get("id") or ae.get("id") == "synthetic":
        raise ConfigError(
            "the store records no loadable autoencoder; pass --vae PATH_OR_ID for the LPL/samples"
        )
    return str(ae["id"]), ae.get("subfolder")


def load_decoder_vae(cfg: TrainConfig, manifest: dict[str, Any], device: torch.device) -> nn.Module:
    """The frozen autoencoder (eval, no grad). The store's own AE must still be the one that encoded
    it (else `StoreMismatchError`); an explicit `--vae` that differs only warns (e.g. a fine-tuned
    decoder with the same latent space)."""

    spec, sub = autoencoder_spec(cfg, manifest)
    # the store's own hub autoencoder is loaded at the commit that encoded it
    rev = None if cfg.lpl.vae else (manifest.get("autoencoder") or {}).get("revision")
    vae = load_autoencoder(spec, subfolder=sub, device=device, revision=rev)
    if manifest.get("autoencoder", {}).get("config_hash") in (None, "0"):
        return vae  # synthetic stores record no real autoencoder
    try:
        check_store_autoencoder(
            manifest, autoencoder_info(vae, spec, sub), str(cfg.store),
            fix="re-encode the store with this autoencoder (new --out) or pass --vae with the original",
        )  # fmt: skip
    except StoreMismatchError as exc:
        if not cfg.lpl.vae:
            raise
        warnings.warn(f"{exc} (continuing: --vae was given explicitly)", stacklevel=2)
    return vae


def uses_feature_stats(loss: LPLConfig) -> bool:
    """Whether the loss reads the store's cached decoder-feature statistics (`lplkit stats`)."""
    return loss.norm == "dataset" or (loss.outlier_source == "dataset" and bool(loss.outliers))


def lpl_feature_stats(loss: LPLConfig, vae: nn.Module, store: Any) -> dict[str, Any]:
    """The store's cached decoder-feature statistics, checked against what the loss will tap.

    Refuses (one line each) statistics that are missing, computed to a smaller depth, computed with
    the other `apply_post_quant_conv`, or computed with another autoencoder (config/weights hash):
    each would silently normalize the features with numbers that describe different features.
    """

    url = str(getattr(store, "url", store))
    what = f"lpl.loss.norm={loss.norm}, outlier_source={loss.outlier_source}"
    stats = load_stats(store)
    if stats is None or not stats.layers:
        how = "has no statistics" if stats is None else "has latent statistics only"
        raise ConfigError(
            f"{what} needs the store's decoder-feature statistics, but {url} {how}: "
            f"run `lplkit stats {url}` first"
        )
    meta = stats.meta or {}
    taps = DecoderTaps(vae, loss.depth, apply_post_quant_conv=loss.apply_post_quant_conv)
    have = len(stats.layers) - 1
    if have < taps.depth:
        raise ConfigError(
            f"the statistics in {url} cover decoder depth {have}, but the LPL taps depth "
            f"{taps.depth}; re-run `lplkit stats {url}` (all layers) or lower lpl.loss.depth"
        )
    stored_pqc = bool(meta.get("apply_post_quant_conv", True)) and taps.has_post_quant_conv
    used_pqc = taps.post_quant_conv is not None
    if stored_pqc != used_pqc:
        flag = "" if used_pqc else " --no-post-quant-conv"
        raise ConfigError(
            f"the statistics in {url} were computed {'with' if stored_pqc else 'without'} "
            f"post_quant_conv, but the LPL runs the decoder {'with' if used_pqc else 'without'} it "
            f"(lpl.loss.apply_post_quant_conv={loss.apply_post_quant_conv}); "
            f"re-run `lplkit stats {url}{flag}`"
        )
    ae = meta.get("autoencoder") or {}
    now = {"config_hash": config_hash(vae), "weights_hash": weights_hash(vae)}
    for key, value in now.items():
        if ae.get(key) and ae[key] != value:
            raise StoreMismatchError(
                f"the statistics in {url} were computed with autoencoder {ae.get('id')!r} ({key} "
                f"{str(ae[key])[:12]}), but the LPL decodes with one whose {key} is {value[:12]}; "
                f"re-run `lplkit stats {url}` with the store's autoencoder, or use another norm"
            )
    return stats.feature_stats


def make_lpl(cfg: TrainConfig, vae: nn.Module, store: Any) -> nn.Module:
    """`LatentPerceptualLoss` with exactly the resolved options `cfg.lpl.loss` (and the store's
    checked feature statistics when they are used)."""

    loss = cfg.lpl.loss
    assert loss is not None  # LplTermConfig.__post_init__ resolves it
    kwargs: dict[str, Any] = {f.name: getattr(loss, f.name) for f in fields(loss)}
    if uses_feature_stats(loss):
        kwargs["feature_stats"] = lpl_feature_stats(loss, vae, store)
    return LatentPerceptualLoss(vae, cfg.lpl.preset, **kwargs)


def init_from_base(
    cfg: TrainConfig, store: Any, num_classes: int | None
) -> tuple[nn.Module, LatentNormalizer, dict[str, Any]]:
    """The `--init` base's weights and its latent normalization, checked against this run: the same
    architecture, latent shape, classes and objective, and a store of the same autoencoder. A
    diffusers checkpoint (hub id, pipeline or model directory) goes to `init_from_pipeline`."""

    if is_pipeline_spec(str(cfg.init)):
        return init_from_pipeline(cfg, store, num_classes)
    base = load_base(str(cfg.init))
    info = base.info
    problems = []
    if info["model"]["name"] != cfg.model.name:
        problems.append(f"model {info['model']['name']} (this run: --model {cfg.model.name})")
    if store.bucketed:  # the model runs at every bucket grid: only the channels must agree
        if int(info["latent_shape"][0]) != int(store.buckets[0].latent_shape[0]):
            have = store.buckets[0].latent_shape[0]
            problems.append(f"latents {info['latent_shape']} (store: {have} channels)")
    elif list(info["latent_shape"]) != list(store.latent_shape):
        problems.append(f"latents {info['latent_shape']} (store: {list(store.latent_shape)})")
    base_classes = info.get("num_classes")
    # a store holding a subset of the base's classes is fine (labels index the same table)
    if (base_classes is None) != (num_classes is None) or (
        num_classes is not None and base_classes is not None and num_classes > base_classes
    ):
        problems.append(f"{base_classes} classes (store: labels of {num_classes} classes)")
    if info["objective"].get("kind") != cfg.objective.kind:
        problems.append(
            f"objective {info['objective'].get('kind')} (this run: {cfg.objective.kind})"
        )
    base_ae = (info.get("store") or {}).get("autoencoder") or {}
    store_ae = store.manifest.get("autoencoder") or {}
    if base_ae.get("weights_hash") and base_ae.get("weights_hash") != store_ae.get("weights_hash"):
        problems.append("another autoencoder than this store's (weights hash differs)")
    if problems:
        raise ConfigError(f"--init {cfg.init}: the base was trained with " + "; ".join(problems))
    normalizer = LatentNormalizer.from_record(base.normalization)
    record = {"spec": str(cfg.init), "source": base.source, "step": base.step}
    return base.model.train(), normalizer, record


def build_components(
    cfg: TrainConfig, device: torch.device, normalization: dict[str, Any] | None = None
) -> Components:
    """Open the store and build model, objective, normalizer, LPL and the sample-grid callback.

    `normalization` (a resumed run's `run.json` record) keeps the latent normalization the run
    started with: running `lplkit stats` on the store later must not change a run's latent space.
    """

    # A damaged store must stop the run here (before it is opened: damaged array metadata would
    # crash the open), not train on zeros read from a missing shard file.
    require_sound_store(cfg.store, full=cfg.verify_store)
    store = LatentStore.open(cfg.store)
    buckets = store.buckets
    C, h, w = default_latent_shape(store)
    grids = [(int(b.latent_shape[1]), int(b.latent_shape[2])) for b in buckets]
    sample_size = h if not store.bucketed else bucketed_sample_size(cfg.model.name, grids)
    text_model = is_text_model(cfg.model.name)
    text_names, families, empty = text_setup(cfg, store, text_model)
    num_classes = None if text_model else store_num_classes(store)
    dims = tc.text_dims(empty) if empty is not None else None
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every re-run
    init = None
    model: Any  # a Denoiser (models.py)
    if cfg.init:
        model, normalizer, init = init_from_base(cfg, store, num_classes)
        num_classes = model.num_classes
        base_dims = model.spec.get("text")
        if dims is not None and base_dims != dims:
            raise ConfigError(
                f"--init {cfg.init}: the base reads text of {base_dims}, but --text-encoder "
                f"{','.join(text_names)} gives {dims}"
            )
    else:
        model = build_model(cfg.model.name, in_channels=C, sample_size=sample_size,
                            num_classes=num_classes, text=dims)  # fmt: skip
        normalizer = make_normalizer(store)
    for gh, gw in grids:  # every bucket's grid must be one the model can run on
        check_grid(cfg.model.name, gh, gw, grid_multiple(model.net))
    if normalization is not None:
        normalizer = LatentNormalizer.from_record(normalization)
    objective = make_objective(cfg)
    vae = None
    if cfg.lpl.enabled or cfg.log.sample_every > 0:
        vae = load_decoder_vae(cfg, store.manifest, device)
    lpl: Any = make_lpl(cfg, vae, store).to(device) if cfg.lpl.enabled and vae is not None else None
    grid = None
    if vae is not None and cfg.log.sample_every > 0:
        preview = (
            preview_text(store, text_names, families, cfg.log.sample_n) if text_names else None
        )
        grid = make_sample_grid(cfg, objective, normalizer, vae, (C, h, w), num_classes, preview)
    return Components(
        model=model,
        objective=objective,
        normalizer=normalizer,
        store=store,
        latent_shape=(C, h, w),
        null_label=int(model.null_class_id)
        if num_classes and cfg.model.label_dropout > 0
        else None,
        conditional=num_classes is not None,
        lpl=lpl.forward_gathered if lpl is not None else None,
        sample_grid=grid,
        num_classes=num_classes,
        model_spec=model.spec,
        init=init,
        text_names=text_names,
        text_families=families,
        empty_text=empty,
        text_record=[{"name": n, **store.text_encoders[n]} for n in text_names] or None,
        buckets=[b.to_dict() for b in buckets] if store.bucketed else None,
    )
