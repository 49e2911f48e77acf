"""``lplkit train --init`` from a diffusers checkpoint: a ``DiTPipeline`` or a ``DiTTransformer2DModel``.

SPEC is a hub id (``facebook/DiT-XL-2-256``, read through the hub cache at ``--init-revision``, the
resolved commit recorded), a local pipeline directory (``save_pretrained`` layout, e.g. an
``lplkit export``), or either followed by ``:SUBFOLDER`` naming the model folder (default
``transformer``; a bare model directory is read as is). What is taken from it, and checked against
the run and its store (each mismatch refused in one line before anything is written):

- the denoiser: the checkpoint's own ``DiTTransformer2DModel`` config (any size), weights loaded
  exactly (`lplkit.diffusion.denoisers.wrap_diffusers`); in_channels / sample_size must equal the
  store's latents.
- the latent space: the pipeline's VAE must be the store's autoencoder (config and weights hash,
  `lplkit.autoencoders.loading.autoencoder_info`); the run's normalization is the pipeline's scalar
  ``z_n = (z - shift_factor) * scaling_factor`` (DiTPipeline's own map), not the store's statistics.
  An ``lplkit export`` directory carries ``lplkit.json`` (the run's normalization and the autoencoder
  it folded, `lplkit.export`): it re-imports to that normalization, checked against the original
  autoencoder.
- the objective: the scheduler config's ``prediction_type`` / betas (``epsilon`` -> eps,
  ``v_prediction`` -> v, flow-matching schedulers -> flow) must equal ``--objective`` and its
  schedule; there is no silent switch between them.
- classes: the pipeline's ``id2label`` matched by name against the store's class names (a full
  label, or one of its comma-separated synonyms when that one is unique); a subset or another
  order becomes the model's ``label_map``; the null class stays the checkpoint's (DiT: 1000).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lplkit.autoencoders.loading import autoencoder_info
from lplkit.diffusion.denoisers import Denoiser, wrap_diffusers
from lplkit.errors import ConfigError, StoreMismatchError
from lplkit.train.normalization import LatentNormalizer

__all__ = [
    "EXPORT_RECORD",
    "PipelineSource",
    "init_from_pipeline",
    "is_pipeline_spec",
    "match_classes",
    "objective_of_scheduler",
    "resolve_pipeline",
]

#: the file `lplkit export` writes beside model_index.json: normalization + folded autoencoder
EXPORT_RECORD = "lplkit.json"
_DEFAULT_MODEL_FOLDER = "transformer"
_FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMapEulerDiscreteScheduler",
                    "FlowMatchHeunDiscreteScheduler")  # fmt: skip
_DDPM_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}


@dataclass
class PipelineSource:
    """Where a checkpoint lives: ``root`` (local directory or hub id) at ``revision`` (a commit,
    None when local), with the model in ``subfolder``; ``files`` reads a JSON file from it."""

    spec: str
    root: str
    revision: str | None
    subfolder: str | None
    local: bool

    @property
    def label(self) -> str:
        """Where the weights came from, as recorded in the run (``org/name@commit:transformer``)."""
        at = f"@{self.revision}" if self.revision else ""
        sub = f":{self.subfolder}" if self.subfolder else ""
        root = self.root if not self.local else str(Path(self.root).resolve())
        return f"{root}{at}{sub}"

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """A JSON file of the checkpoint (None when it has none)."""
        if self.local:
            path = Path(self.root) / rel
            if not path.is_file():
                return None
        else:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

            try:
                path = Path(hf_hub_download(self.root, rel, revision=self.revision))
            except (EntryNotFoundError, LocalEntryNotFoundError):
                return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--init {self.spec}: {rel} is not readable JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--init {self.spec}: {rel} is not a JSON object")
        return data


def _split_subfolder(spec: str) -> tuple[str, str | None]:
    """``ROOT:SUB`` -> (ROOT, SUB) when SUB is a plain folder name (no '/')."""
    root, sep, sub = spec.rpartition(":")
    if sep and root and sub and "/" not in sub and not Path(spec).exists():
        return root, sub
    return spec, None


def is_pipeline_spec(spec: str) -> bool:
    """Whether ``--init spec`` names a diffusers checkpoint rather than a bundled base or an lplkit
    run/base directory (those hold run.json)."""
    root, sub = _split_subfolder(spec)
    path = Path(root).expanduser()
    if path.is_dir():
        if (path / "run.json").is_file() and sub is None:
            return False
        return (path / "model_index.json").is_file() or (
            path / (sub or "") / "config.json"
        ).is_file()
    # not a local directory: a hub id looks like org/name
    return sub is not None or (root.count("/") == 1 and not root.startswith((".", "/", "~")))


def resolve_pipeline(spec: str, revision: str | None = None) -> PipelineSource:
    """Find the checkpoint: a local directory as is, a hub id resolved to one commit through the
    hub cache (``HF_HUB_OFFLINE=1`` reads only the cache)."""
    root, sub = _split_subfolder(spec)
    path = Path(root).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ConfigError(f"--init-revision applies to hub ids; {root!r} is a local directory")
        if sub is None and (path / "model_index.json").is_file():
            sub = _DEFAULT_MODEL_FOLDER
        if not (path / (sub or "") / "config.json").is_file():
            where = path / (sub or "")
            raise ConfigError(
                f"--init {spec}: {where} holds no config.json (not a diffusers model)"
            )
        return PipelineSource(spec, str(path), None, sub, local=True)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError

    from lplkit.hub import hub_failure

    first = f"{sub}/config.json" if sub else "model_index.json"
    try:
        got = Path(hf_hub_download(root, first, revision=revision))
    except HFValidationError:
        raise ConfigError(
            f"--init {spec!r} is neither a bundled base, a local directory, nor a hub id 'org/name'"
        ) from None
    except EntryNotFoundError:
        raise ConfigError(
            f"--init {spec}: the hub repo has no {first} (not a diffusers pipeline; name the "
            "model folder as ORG/NAME:SUBFOLDER)"
        ) from None
    except Exception as exc:  # every hub failure becomes one actionable line
        raise ConfigError(
            f"--init {spec} is no local directory nor bundled base; as a hub id: "
            + hub_failure(exc, repo=root, kind="model", revision=revision)
        ) from None
    parts = got.parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else revision
    return PipelineSource(spec, root, commit, sub or _DEFAULT_MODEL_FOLDER, local=False)


def objective_of_scheduler(config: dict[str, Any]) -> dict[str, Any]:
    """The lplkit objective a diffusers scheduler config describes: ``{"kind", ...}`` with the DDPM
    ``schedule``, ``num_train_timesteps``, ``beta_start``, ``beta_end`` (flow: kind only)."""
    name = str(config.get("_class_name", ""))
    if name in _FLOW_SCHEDULERS or config.get("prediction_type") == "flow_prediction":
        return {"kind": "flow"}
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _DDPM_PREDICTIONS:
        raise ConfigError(
            f"scheduler {name} predicts {prediction!r}; lplkit trains eps, v or flow only"
        )
    if config.get("trained_betas") is not None:
        raise ConfigError(f"scheduler {name} uses trained_betas, which lplkit cannot reproduce")
    return {
        "kind": _DDPM_PREDICTIONS[prediction],
        "schedule": config.get("beta_schedule", "linear"),
        "num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
        "beta_start": float(config.get("beta_start", 0.0001)),
        "beta_end": float(config.get("beta_end", 0.02)),
    }


def _check_objective(spec: str, config: dict[str, Any] | None, cfg: Any) -> None:
    if config is None:
        warnings.warn(f"--init {spec}: no scheduler config; the objective "
                      f"--objective {cfg.objective.kind} is not checked", stacklevel=3)  # fmt: skip
        return
    want = objective_of_scheduler(config)
    o = cfg.objective
    if want["kind"] != o.kind:
        raise ConfigError(
            f"--init {spec} was trained with the {want['kind']} objective ({config.get('_class_name')}"
            f" {config.get('prediction_type', '')}), but this run has --objective {o.kind}; pass "
            f"--objective {want['kind']}"
        )
    if want["kind"] == "flow":
        return
    have = {"schedule": o.schedule, "num_train_timesteps": o.num_train_timesteps,
            "beta_start": 0.0001, "beta_end": 0.02}  # fmt: skip
    diff = [f"{k} {want[k]} (this run: {have[k]})" for k in have if want[k] != have[k]]
    if diff:
        raise ConfigError(
            f"--init {spec}: the scheduler's {'; '.join(diff)}; set objective.schedule / "
            "objective.num_train_timesteps to match (lplkit's DDPM betas start at 1e-4, end at 0.02)"
        )


def match_classes(
    store_names: list[str] | None, store_k: int | None, id2label: dict[str, str] | None, table: int
) -> tuple[int, list[int] | None]:
    """``(num_classes, label_map)`` for a store with ``store_k`` classes named ``store_names`` on a
    checkpoint with ``table`` classes (its null id is ``table``) labelled ``id2label``.

    Store names equal to the checkpoint's first labels, in order, match by position (ImageNet's
    list names two classes "crane"); otherwise a store class matches the one checkpoint id whose
    label equals its name, else whose comma-separated synonyms hold it exactly once over all labels. ``label_map`` is None when the
    store's classes are the checkpoint's, in order; else store id k -> checkpoint id, the store's
    null id (its class count) -> ``table``. Without names on either side classes match by id
    (warned). Unmatched, ambiguous or doubly matched classes raise ``ConfigError``.
    """
    if store_k is None:
        raise ConfigError(
            "the checkpoint is class-conditional but the store has no labels; encode a labelled "
            "source (or post-train a class-conditional model on labelled data)"
        )
    k = max(store_k, len(store_names or ()))
    if not store_names or not id2label:
        warnings.warn(
            f"classes matched by id: {'the store' if not store_names else 'the checkpoint'} "
            "records no class names", stacklevel=3,
        )  # fmt: skip
        if k > table:
            raise ConfigError(f"the store has {k} classes; the checkpoint has {table}")
        ids = list(range(k))
    else:
        full: dict[str, list[int]] = {}
        synonyms: dict[str, list[int]] = {}
        for i, v in id2label.items():
            full.setdefault(str(v), []).append(int(i))
            for name in {s.strip() for s in str(v).split(",")}:
                synonyms.setdefault(name, []).append(int(i))
        ids, bad = [], []
        in_order = [id2label.get(str(i)) for i in range(len(store_names))] == list(store_names)
        for k_, name in enumerate(store_names):
            if in_order:  # the checkpoint's own list (ImageNet's two "crane" classes included)
                ids.append(k_)
            elif len(full.get(name, ())) == 1:
                ids.append(full[name][0])
            elif name not in full and len(synonyms.get(name, ())) == 1:
                ids.append(synonyms[name][0])
            else:
                why = "ambiguous" if full.get(name) or synonyms.get(name) else "unknown"
                bad.append(f"{name!r} ({why})")
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ConfigError(
                f"store classes not in the checkpoint's id2label: {', '.join(bad[:3])}{more}; "
                "name the store's classes as the checkpoint does (e.g. its id2label values)"
            )
        if len(set(ids)) != len(ids):
            raise ConfigError("two store classes match the same checkpoint class; rename one")
        if any(i >= table for i in ids):
            raise ConfigError(f"id2label names class ids >= the checkpoint's {table} classes")
    if ids == list(range(table)):
        return table, None
    return k, [*ids, table]


def _check_vae(src: PipelineSource, store: Any, record: dict[str, Any] | None) -> None:
    """The store must hold latents of the checkpoint's autoencoder (see the module docstring)."""
    stored = store.manifest.get("autoencoder") or {}
    url = str(getattr(store, "url", store))
    if record is not None:  # an lplkit export: its VAE is the fold of this autoencoder
        want = record.get("autoencoder") or {}
        if want.get("config_hash") != stored.get("config_hash") or (
            want.get("weights_hash") and want.get("weights_hash") != stored.get("weights_hash")
        ):
            raise StoreMismatchError(
                f"--init {src.spec} was trained on latents of autoencoder {want.get('id')!r}, but "
                f"{url} was encoded with {stored.get('id')!r}; encode with --vae {want.get('id')}"
            )
        return
    vae_cfg = src.read_json("vae/config.json")
    if vae_cfg is None:
        warnings.warn(f"--init {src.spec}: no vae/ in the checkpoint; the store's autoencoder is "
                      "assumed to be its latent space", stacklevel=3)  # fmt: skip
        return
    from lplkit.autoencoders.loading import load_autoencoder

    vae = load_autoencoder(src.root, subfolder="vae", revision=src.revision)
    info = autoencoder_info(vae, src.root, "vae")
    del vae
    fields = ("class", "latent_channels", "scaling_factor", "shift_factor", "downsample_factor")
    diff = [f"{f} {stored.get(f)} vs {info[f]}" for f in fields if stored.get(f) != info[f]]
    if not diff and stored.get("config_hash") != info["config_hash"]:
        diff.append("config (block layout or other options) differs")
    if not diff and stored.get("weights_hash") and stored["weights_hash"] != info["weights_hash"]:
        diff.append("weights differ")
    if diff:
        rev = f" --vae-revision {src.revision}" if src.revision else ""
        raise StoreMismatchError(
            f"{url} was encoded with autoencoder {stored.get('id')!r}, not the checkpoint's VAE "
            f"({'; '.join(diff)}); encode with --vae {src.root} --vae-subfolder vae{rev}"
        )


def _normalizer(
    src: PipelineSource, record: dict[str, Any] | None, channels: int
) -> LatentNormalizer:
    if record is not None:
        return LatentNormalizer.from_record(record["normalization"])
    vae_cfg = src.read_json("vae/config.json") or {}
    return LatentNormalizer.from_autoencoder(vae_cfg, channels)


def init_from_pipeline(
    cfg: Any, store: Any, num_classes: int | None
) -> tuple[Denoiser, LatentNormalizer, dict[str, Any]]:
    """The checkpoint ``cfg.init`` as a denoiser, the latent normalization it was trained in, and
    the run's ``init`` record; every check of the module docstring runs first."""
    import diffusers
    import torch

    src = resolve_pipeline(str(cfg.init), getattr(cfg, "init_revision", None))
    model_cfg = src.read_json(f"{src.subfolder}/config.json" if src.subfolder else "config.json")
    assert model_cfg is not None  # resolve_pipeline found it
    cls_name = model_cfg.get("_class_name")
    if cls_name != "DiTTransformer2DModel":
        raise ConfigError(
            f"--init {src.spec}: model class {cls_name!r} is not supported; lplkit post-trains "
            "DiTTransformer2DModel checkpoints (DiTPipeline)"
        )
    bucketed = getattr(store, "bucketed", False)
    # a bucketed store: the DiT runs at every bucket's grid (lplkit.diffusion.patch_grid; the
    # grids are checked against its patch in build_components): only the channels must agree
    C, h, _w = (int(v) for v in (store.buckets[0].latent_shape if bucketed else store.latent_shape))
    shape = (model_cfg.get("in_channels"), model_cfg.get("sample_size"))
    if shape != (C, h) and not (bucketed and shape[0] == C):
        raise ConfigError(
            f"--init {src.spec} denoises {shape[0]}x{shape[1]}x{shape[1]} latents, the store holds "
            f"{C}x{h}x{h}; encode at the checkpoint's resolution with its VAE"
        )
    out_ch = int(model_cfg.get("out_channels") or C)
    if out_ch not in (C, 2 * C):
        raise ConfigError(f"--init {src.spec}: out_channels {out_ch} is neither {C} nor {2 * C}")
    index = src.read_json("model_index.json")
    record = src.read_json(EXPORT_RECORD)
    _check_objective(src.spec, src.read_json("scheduler/scheduler_config.json"), cfg)
    _check_vae(src, store, record)
    table = int(model_cfg.get("num_embeds_ada_norm") or 0)
    id2label = (index or {}).get("id2label")
    k, label_map = match_classes(getattr(store, "classes", None), num_classes, id2label, table)
    with warnings.catch_warnings():
        # diffusers passes huggingface_hub a deprecated argument (as in load_autoencoder)
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")
        net = diffusers.DiTTransformer2DModel.from_pretrained(
            src.root, subfolder=src.subfolder, revision=src.revision, torch_dtype=torch.float32
        )
    extra = {"source": src.label, "id2label": id2label}
    model = wrap_diffusers(net, name=f"diffusers:{src.label}", num_classes=k,
                           label_map=label_map, extra=extra)  # fmt: skip
    normalizer = _normalizer(src, record, C)
    init = {
        "spec": src.spec,
        "source": src.label,
        "step": None,
        "kind": "diffusers",
        "revision": src.revision,
        "learned_sigma": out_ch == 2 * C,
        "label_map": label_map,
    }
    return model.train(), normalizer, init
