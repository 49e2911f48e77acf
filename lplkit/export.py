"""A trained run -> a diffusers ``DiTPipeline`` directory (``DiTPipeline.from_pretrained(DIR)``).

Text runs go to ``PixArtSigmaPipeline`` / ``StableDiffusion3Pipeline`` (`lplkit.export_text`),
with the same ``vae/`` fold and scheduler choice as below.

What is written (``save_pretrained`` layout):

- ``transformer/``: the run's ``DiTTransformer2DModel`` (EMA weights by default). ``DiTPipeline`` uses
  class id 1000 as the null class of classifier-free guidance, while lplkit's null id is
  ``num_classes``: the label table is re-laid out to 1001 rows, rows ``0..K-1`` the K classes, every
  other row (1000 included) lplkit's null embedding. An unconditional run gets the null embedding in
  every row (any label gives the unconditional model).
- ``scheduler/``: eps / v -> ``DDIMScheduler`` (the run's betas, ``clip_sample=False``,
  ``set_alpha_to_one=True``, ``leading`` spacing: exactly ``lplkit sample``'s DDIM); flow ->
  ``FlowMapEulerDiscreteScheduler(shift=1)``: its grid ``linspace(1, 0, S + 1)`` is lplkit's Euler
  grid for every step count S, its step ``z - (t_i - t_{i+1}) v`` is lplkit's Euler step, its
  timesteps ``1000 t`` are the denoiser's inputs, and it has the ``scale_model_input`` that
  ``DiTPipeline`` calls, so the exported directory runs in a stock ``DiTPipeline`` as written.
  With a diffusers that lacks it (it is in 0.42), ``FlowMatchEulerDiscreteScheduler`` with
  ``shift_terminal = 1/S`` gives the same grid for the exported S only and needs the one-line
  ``scale_model_input`` shim listed in ``notes``.
- ``vae/``: the run's autoencoder with lplkit's per-channel normalization folded in. lplkit feeds the
  decoder ``z_raw = z / s_c + m_c`` (``s_c = 1/std_c``, ``m_c = mean_c`` from the store statistics),
  which a scalar ``scaling_factor`` cannot express. The 1x1 ``post_quant_conv`` (``W, b``) becomes
  ``W diag(1/s), b + W m`` and the 1x1 ``quant_conv`` maps the posterior into the normalized space
  (``mean' = s (mean - m)``, ``logvar' = logvar + 2 log s``); ``scaling_factor = 1``,
  ``shift_factor = None``. The exported VAE thus encodes to and decodes from the denoiser's space
  (an autoencoder without those convs gets them, identity plus the fold).
- ``model_index.json`` with ``id2label`` from the store's class names (numbers when unknown).
- ``lplkit.json``: the run's normalization and the autoencoder it was folded from, so that
  ``lplkit train --init OUT`` re-imports the export with that normalization and identical weights;
  for a run on a bucketed store also its ``buckets`` (sizes, latent shapes, rows), with a note that
  the stock pipeline samples its square ``sample_size`` only.

A run post-trained from a DiT checkpoint (``--init org/DiT-pipeline``) keeps the checkpoint's label
layout (its 1001-row table, null id 1000) and its ``id2label``; a learned-sigma transformer is
written with its variance half (DiTPipeline steps with the eps half, as ``lplkit sample`` does).

Not representable by a stock pipeline (one line each, raised as ``ConfigError``): non-DiT denoisers
(``UNet-T``), more than 1000 classes (DiT's null id is 1000), deterministic autoencoders (DC-AE: no
1x1 convs to fold into). lplkit's flow Heun sampler has no stock equivalent (diffusers'
``FlowMatchHeunDiscreteScheduler`` uses another grid and an Euler last step): the export reproduces
``--sampler euler``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lplkit.config import check_fields
from lplkit.diffusion.export_config import ExportConfig
from lplkit.errors import ConfigError
from lplkit.store import LatentStore
from lplkit.train.base import load_run_model
from lplkit.train.builders import load_decoder_vae
from lplkit.train.pipeline_init import EXPORT_RECORD

__all__ = ["DIT_NULL_CLASS", "export_run", "flow_scheduler_shim", "fold_normalization"]

#: The class id DiTPipeline feeds as the unconditional label (hard-coded in diffusers).
DIT_NULL_CLASS = 1000

flow_scheduler_shim = "pipe.scheduler.scale_model_input = lambda sample, timestep: sample"


def _conv_or_identity(conv: nn.Conv2d | None, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (out, in), bias (out,)) of a 1x1 conv in float64; identity when absent."""
    if conv is None:
        return torch.eye(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    if conv.kernel_size != (1, 1):
        raise ConfigError(f"cannot fold the normalization into a {conv.kernel_size} conv")
    w = conv.weight.detach().to(torch.float64)[:, :, 0, 0]
    b = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros(w.shape[0])
    return w, b.to(torch.float64)


def fold_normalization(vae: Any, shift: list[float], scale: list[float]) -> nn.Module:
    """A copy of ``vae`` whose latent space is lplkit's normalized one (see the module docstring).

    ``decode(z)`` of the copy equals ``decode(z / scale + shift)`` of ``vae``; ``encode`` returns the
    posterior of ``(z_raw - shift) * scale``. ``scaling_factor`` becomes 1 and ``shift_factor`` None.
    """
    if not (hasattr(vae, "post_quant_conv") and hasattr(vae, "quant_conv")):
        raise ConfigError(
            f"{type(vae).__name__} has no 1x1 quant convs to fold the normalization into; "
            "DiTPipeline cannot decode this run exactly (sample it with `lplkit sample`)"
        )
    m = torch.tensor(shift, dtype=torch.float64)
    s = torch.tensor(scale, dtype=torch.float64)
    if (s <= 0).any():
        raise ConfigError(f"normalization scales must be > 0 to fold, got {scale}")
    c = len(shift)
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    config.update(use_quant_conv=True, use_post_quant_conv=True, scaling_factor=1.0,
                  shift_factor=None, latents_mean=None, latents_std=None)  # fmt: skip
    out = type(vae).from_config({k: v for k, v in config.items() if k in vae.config})
    missing, unexpected = out.load_state_dict(vae.state_dict(), strict=False)
    if unexpected or any("quant_conv" not in k for k in missing):
        raise ConfigError(f"cannot copy {type(vae).__name__}: {missing} {unexpected}")

    wq, bq = _conv_or_identity(vae.quant_conv, 2 * c)
    row = torch.cat([s, torch.ones(c, dtype=torch.float64)])  # mean rows scaled, logvar rows not
    wq2 = row[:, None] * wq
    bq2 = row * bq + torch.cat([-s * m, 2.0 * torch.log(s)])
    wp, bp = _conv_or_identity(vae.post_quant_conv, c)
    wp2 = wp / s[None, :]
    bp2 = bp + wp @ m
    with torch.no_grad():
        for conv, w, b in ((out.quant_conv, wq2, bq2), (out.post_quant_conv, wp2, bp2)):
            conv.weight.copy_(w[:, :, None, None].to(conv.weight.dtype))
            conv.bias.copy_(b.to(conv.bias.dtype))
    return out.eval()


def _keeps_layout(model: Any) -> bool:
    """A run post-trained from a DiT checkpoint whose label table already is DiTPipeline's."""
    config = getattr(model.net, "config", {})
    return bool(model.spec.get("diffusers")) and config.get("num_embeds_ada_norm") == DIT_NULL_CLASS


def _export_transformer(model: Any) -> nn.Module:
    """The run's DiT with its label table laid out for DiTPipeline (null class at row 1000)."""
    from diffusers import DiTTransformer2DModel

    net = model.net
    if not isinstance(net, DiTTransformer2DModel):
        raise ConfigError(
            f"model {model.spec.get('name')!r} is not a DiT; DiTPipeline holds only a "
            "DiTTransformer2DModel (sample this run with `lplkit sample`)"
        )
    k = model.num_classes
    if _keeps_layout(model):
        # post-trained from a DiT checkpoint: its own label layout (null at 1000), unchanged
        out = DiTTransformer2DModel.from_config(net.config)
        out.load_state_dict(net.state_dict(), strict=True)
        return out.eval()
    if k is not None and k > DIT_NULL_CLASS:
        raise ConfigError(
            f"the run has {k} classes; DiTPipeline's null class is id {DIT_NULL_CLASS}, so it "
            f"holds at most {DIT_NULL_CLASS} classes"
        )
    config = {kk: v for kk, v in dict(net.config).items() if not kk.startswith("_")}
    config["num_embeds_ada_norm"] = DIT_NULL_CLASS
    out = DiTTransformer2DModel.from_config(config)
    state = {}
    rows = getattr(model, "label_map", None)  # model ids -> table rows (a remapped checkpoint)
    rows = rows.cpu() if rows is not None else torch.arange((k or 0) + 1)
    null_row = int(rows[-1]) if rows.numel() else model.null_class_id
    for name, w in net.state_dict().items():
        if name.endswith("class_embedder.embedding_table.weight"):
            null = w[null_row if k is not None else model.null_class_id]
            table = null.expand(DIT_NULL_CLASS + 1, -1).clone()
            if k is not None:
                table[:k] = w[rows[:k]]
            w = table
        state[name] = w
    out.load_state_dict(state, strict=True)
    return out.eval()


def _scheduler(tcfg: Any, steps: int) -> Any:
    o = tcfg.objective
    if o.kind == "flow":
        import diffusers

        if hasattr(diffusers, "FlowMapEulerDiscreteScheduler"):
            return diffusers.FlowMapEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        from diffusers import FlowMatchEulerDiscreteScheduler

        # diffusers' grid is linspace(1, sigma_min, S) + [0]; stretched to end at 1/S it is lplkit's
        # t_i = 1 - i/S. One step needs no stretch (and shift_terminal = 1 would divide by zero).
        terminal = 1.0 / steps if steps > 1 else None
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, shift_terminal=terminal
        )
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=o.num_train_timesteps,
        beta_schedule=o.schedule,
        prediction_type="epsilon" if o.kind == "eps" else "v_prediction",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing="leading",
    )


def _class_names(info: dict[str, Any], num_classes: int | None) -> tuple[dict[str, str], list[str]]:
    """``id2label`` from the store's class names (numbers when the store has none) + notes."""
    if not num_classes:
        return {}, []
    names = None
    url = (info.get("store") or {}).get("url")
    try:
        names = getattr(LatentStore.open(str(url)), "classes", None) if url else None
    except (OSError, ValueError) as exc:
        return {str(i): str(i) for i in range(num_classes)}, [
            f"id2label: numeric labels (the store {url} could not be opened: {exc})"
        ]
    if names is None or len(names) < num_classes:
        return {str(i): str(i) for i in range(num_classes)}, [
            f"id2label: numeric labels (the store {url} records no class names)"
        ]
    return {str(i): str(names[i]) for i in range(num_classes)}, []


def _flow_note(scheduler: Any, steps: int) -> str:
    at = "any --steps" if hasattr(scheduler, "scale_model_input") else f"--steps {steps}"
    return (f"flow: reproduces `lplkit sample --sampler euler` at {at} "
            "(lplkit's Heun has no stock scheduler)")  # fmt: skip


def _export_text(
    run_dir: Path,
    out: Path,
    tcfg: Any,
    info: dict[str, Any],
    step: int,
    ema: bool,
    steps: int,
    pipeline: str,
    record: Sequence[Mapping[str, Any]],
    **parts: Any,
) -> dict[str, Any]:
    """A text run's pipeline directory (`lplkit.export_text`) and its summary; ``record``: the
    run's text encoders in the pipeline's order."""
    from lplkit.export_text import export_text_pipeline, text_record

    notes = export_text_pipeline(pipeline, record, out=out, **parts)
    if tcfg.objective.kind == "flow":
        notes.append(_flow_note(parts["scheduler"], steps))
    extra = text_record(record, pipeline)
    (out / EXPORT_RECORD).write_text(json.dumps(
        {"normalization": info["normalization"], "autoencoder": info["store"]["autoencoder"],
         "objective": info["objective"], "checkpoint_step": step, **extra},
        indent=2, default=str) + "\n")  # fmt: skip
    return {
        "run_dir": str(run_dir),
        "out": str(out),
        "checkpoint_step": step,
        "weights": "ema" if ema else "model",
        "pipeline": pipeline,
        "objective": tcfg.objective.kind,
        "scheduler": type(parts["scheduler"]).__name__,
        "steps": steps if tcfg.objective.kind == "flow" else None,
        "text_encoders": [e.get("name") for e in record],
        "call": extra["call"],
        "normalization": info["normalization"]["source"],
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
        "notes": notes,
    }


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    ema: bool = True,
    steps: int = 50,
    vae: str | None = None,
) -> dict[str, Any]:
    """Write ``run_dir``'s latest checkpoint as a ``DiTPipeline`` directory ``out`` (a text run:
    ``PixArtSigmaPipeline`` / ``StableDiffusion3Pipeline``, `lplkit.export_text`, refused before
    anything is written when its encoders do not fit); returns a JSON-able summary (what was written,
    the scheduler, ``notes`` on what the stock pipeline lacks; text runs add ``call``).

    ``steps`` only matters for flow runs (the exported Euler grid, see the module docstring).
    """
    from diffusers import DiTPipeline

    run_dir, out = Path(run_dir), Path(out)
    check_fields(ExportConfig, "export", steps=steps)
    if out.exists() and any(out.iterdir()) and not (out / "model_index.json").is_file():
        raise ConfigError(f"{out} exists and is not a pipeline directory; choose an empty --out")
    tcfg, info, model, step = load_run_model(run_dir, ema=ema)
    text_pipeline = None
    if model.family != "class":  # a text run: PixArtSigmaPipeline / StableDiffusion3Pipeline
        from lplkit.export_text import check_text_encoders

        text_pipeline, text_encoders = check_text_encoders(
            model.family, str(model.spec.get("name")), info.get("text_encoders") or []
        )
        transformer: nn.Module = model.net
    else:
        transformer = _export_transformer(model)

    if vae is not None:
        tcfg.lpl.vae = vae
    ae = load_decoder_vae(tcfg, {"autoencoder": info["store"]["autoencoder"]}, torch.device("cpu"))
    nrm = info["normalization"]
    folded = fold_normalization(ae, list(nrm["shift"]), list(nrm["scale"]))
    scheduler = _scheduler(tcfg, steps)
    if text_pipeline is not None:
        return _export_text(run_dir, out, tcfg, info, step, ema, steps, text_pipeline,
                            text_encoders, transformer=transformer, vae=folded,
                            scheduler=scheduler)  # fmt: skip
    id2label, notes = _class_names(info, info["num_classes"])
    checkpoint_labels = (model.spec.get("diffusers") or {}).get("id2label")
    if checkpoint_labels and _keeps_layout(model):
        id2label, notes = (
            dict(checkpoint_labels),
            [],
        )  # the checkpoint's ids (see _export_transformer)
    if tcfg.objective.kind == "flow":
        notes.append(_flow_note(scheduler, steps))
        if not hasattr(scheduler, "scale_model_input"):
            notes.append(
                "DiTPipeline calls scheduler.scale_model_input, which "
                f"{type(scheduler).__name__} lacks; after loading run: {flow_scheduler_shim}"
            )

    pipe = DiTPipeline(transformer=transformer, vae=folded, scheduler=scheduler, id2label=id2label)
    pipe.save_pretrained(out, safe_serialization=True)
    # DiTPipeline takes id2label as an __init__ argument but does not register it: write it into
    # model_index.json, from where from_pretrained passes it back.
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = id2label
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    # what `lplkit train --init OUT` needs to re-import it exactly: the normalization folded into
    # vae/ and the autoencoder it was folded from (lplkit.train.pipeline_init)
    record = {"normalization": nrm, "autoencoder": info["store"]["autoencoder"],
              "objective": info["objective"], "checkpoint_step": step}  # fmt: skip
    if info.get("buckets"):  # trained on aspect-ratio buckets (lplkit.diffusion.patch_grid)
        record["buckets"] = info["buckets"]
        sizes = ", ".join(f"{b['size'][0]}x{b['size'][1]}" for b in info["buckets"])
        notes.append(
            f"trained on buckets {sizes}: DiTPipeline samples sample_size^2 latents only (and a "
            "stock DiTTransformer2DModel unpatchifies square grids only); other sizes: "
            "`lplkit sample --size WxH`"
        )
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return {
        "run_dir": str(run_dir),
        "out": str(out),
        "checkpoint_step": step,
        "weights": "ema" if ema else "model",
        "pipeline": "DiTPipeline",
        "objective": tcfg.objective.kind,
        "scheduler": type(scheduler).__name__,
        "steps": steps if tcfg.objective.kind == "flow" else None,
        "num_classes": info["num_classes"],
        "null_class_id": DIT_NULL_CLASS,
        "normalization": nrm["source"],
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
        "notes": notes,
    }
