"""Load any supported diffusers autoencoder, describe its identity, and compute posterior moments.

Supported classes (resolved from the checkpoint config's `_class_name`):

| class | posterior | moments |
| --- | --- | --- |
| `AutoencoderKL` (SD, SDXL, SD3, FLUX.1 VAEs) | diagonal Gaussian | mean, std = exp(logvar / 2) |
| `AutoencoderKLFlux2` | diagonal Gaussian | mean, std = exp(logvar / 2) |
| `AutoencoderDC` (DC-AE) | deterministic | mean = z, std = 0 |

Moments are *raw*: the diffusion model's latent is z' = (z - shift) * scale with z ~ N(mean, std^2),
applied at training time from `scaling_factor` / `shift_factor` (shift None -> 0), so changing the
normalization never needs a re-encode. diffusers clamps logvar to [-30, 20] before std = exp(logvar/2).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lplkit.autoencoders.choice import (
    COMMON_AUTOENCODERS,
    DEFAULT_AUTOENCODER_DATASET,
    autoencoder_choices,
    default_autoencoder,
    missing_vae_message,
)
from lplkit.errors import AutoencoderError, StoreMismatchError
from lplkit.hub import hub_failure

__all__ = [
    "BUNDLED_AUTOENCODERS",
    "COMMON_AUTOENCODERS",
    "DEFAULT_AUTOENCODER_DATASET",
    "HUB_REVISION_ATTR",
    "SUPPORTED_CLASSES",
    "autoencoder_choices",
    "autoencoder_info",
    "default_autoencoder",
    "encode_moments",
    "load_autoencoder",
    "missing_vae_message",
    "resolve_spec",
]

#: Bundled short names -> package-relative directories under `lplkit/assets/` (a diffusers
#: `save_pretrained` directory each). Filled by the package that ships the weights.
BUNDLED_AUTOENCODERS: dict[str, str] = {"tiny-openmoji": "tiny-ae-openmoji"}  # docs/tiny-ae.md

#: class name -> posterior kind ("gaussian": latent_dist; "deterministic": latent, std = 0).
SUPPORTED_CLASSES: dict[str, str] = {
    "AutoencoderKL": "gaussian",
    "AutoencoderKLFlux2": "gaussian",
    "AutoencoderDC": "deterministic",
}

_CONFIG_FILE = "config.json"
#: attribute `load_autoencoder` sets on the module: the hub commit it was loaded at (None if local)
HUB_REVISION_ATTR = "lplkit_hub_revision"


def resolve_spec(spec: str) -> str:
    """Bundled short name -> absolute directory; anything else (local dir, hub id) unchanged."""
    if spec in BUNDLED_AUTOENCODERS:
        path = Path(str(resources.files("lplkit") / "assets" / BUNDLED_AUTOENCODERS[spec]))
        if not (path / _CONFIG_FILE).is_file():
            raise AutoencoderError(
                f"bundled autoencoder {spec!r} is missing its files at {path}; reinstall lplkit"
            )
        return str(path)
    return spec


def _hub_config(repo: str, subfolder: str | None, revision: str | None) -> tuple[Path, str | None]:
    """Download (or find in the hub cache) `repo`'s config.json: (local path, resolved commit).

    `huggingface_hub` honours HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN; the commit is the
    snapshot folder the file lives in (`models--org--name/snapshots/<commit>/...`)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        path = Path(
            hf_hub_download(repo, _CONFIG_FILE, subfolder=subfolder or None, revision=revision)
        )
    except HFValidationError:
        raise AutoencoderError(
            f"--vae {repo!r} is neither a bundled name ({', '.join(BUNDLED_AUTOENCODERS)}), an "
            "existing local directory, nor a hub id 'org/name'"
        ) from None
    except Exception as exc:  # every hub failure becomes one actionable line
        sub = f" (subfolder {subfolder!r})" if subfolder else ""
        raise AutoencoderError(
            f"cannot read the autoencoder config of {repo!r}{sub}: "
            + hub_failure(exc, repo=repo, kind="model", revision=revision)
        ) from None
    parts = path.parts
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts else None
    return path, commit


def _read_config(
    spec: str, subfolder: str | None, revision: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """The checkpoint's config.json (local directory or hub id) without loading weights, and the hub
    commit it was read at (None for a local directory)."""
    local = Path(spec).expanduser()
    if local.exists():
        cfg_path = local / (subfolder or "") / _CONFIG_FILE
        if not cfg_path.is_file():
            hint = "" if subfolder else " (a full pipeline? pass --vae-subfolder vae)"
            raise AutoencoderError(f"{cfg_path} not found: not a diffusers autoencoder dir{hint}")
        commit = None
    else:
        cfg_path, commit = _hub_config(spec, subfolder, revision)
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise AutoencoderError(f"{cfg_path} is not a readable JSON config: {exc}") from None
    if not isinstance(config, dict):
        raise AutoencoderError(f"{cfg_path} is not a JSON object")
    return config, commit


def load_autoencoder(
    spec: str,
    *,
    subfolder: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> nn.Module:
    """Load a diffusers autoencoder in eval mode with `requires_grad_(False)`.

    Args:
        spec: local `save_pretrained` directory, hub id (`stabilityai/sd-vae-ft-ema`) or a bundled
            short name (`BUNDLED_AUTOENCODERS`).
        subfolder: e.g. "vae" for a full pipeline repo.
        revision: hub branch, tag or commit (hub ids only; default: the repo's main branch).

    A hub id is resolved to one commit first (config and weights come from that same snapshot); the
    commit is kept on the module as `HUB_REVISION_ATTR` for `autoencoder_info`.
    """
    path = resolve_spec(spec)
    local = Path(path).expanduser().exists()
    if revision is not None and local:
        raise AutoencoderError(f"--vae-revision applies to hub ids; {spec!r} is a local directory")
    config, commit = _read_config(path, subfolder, revision)
    name = config.get("_class_name")
    if name not in SUPPORTED_CLASSES:
        raise AutoencoderError(
            f"{spec}: autoencoder class {name!r} is not supported; lplkit encodes with "
            f"{', '.join(SUPPORTED_CLASSES)}"
        )
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise AutoencoderError(f"{spec}: diffusers {diffusers.__version__} has no class {name}")
    try:
        with warnings.catch_warnings():
            # diffusers passes huggingface_hub an argument it has deprecated, and every hub load
            # would repeat that notice to a user who cannot act on it
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")
            vae = cls.from_pretrained(
                path,
                subfolder=subfolder,
                revision=commit,
                torch_dtype=dtype,
                # diffusers warns on every load when it would like accelerate and it is absent
                low_cpu_mem_usage=importlib.util.find_spec("accelerate") is not None,
            )
    except (OSError, ValueError) as exc:
        msg = " ".join(str(exc).split())[:400]
        raise AutoencoderError(f"cannot load {name} from {spec!r}: {msg}") from None
    setattr(vae, HUB_REVISION_ATTR, commit)
    return vae.to(device).eval().requires_grad_(False)


def _config_dict(vae: nn.Module) -> dict[str, Any]:
    # Private keys (`_name_or_path`, `_diffusers_version`, ...) do not change the model.
    config: Any = (
        vae.config
    )  # a diffusers FrozenDict (nn.Module.__getattr__ types it Tensor | Module)
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def config_hash(vae: nn.Module) -> str:
    """sha256 of the model config as canonical JSON (sorted keys, private keys dropped)."""
    blob = json.dumps(_config_dict(vae), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def weights_hash(vae: nn.Module) -> str:
    """sha256 of the weights (sorted parameter/buffer names, values as float32 little-endian).

    Tells apart two checkpoints with the same config (e.g. a fine-tuned VAE). It hashes the weights as
    loaded: a checkpoint loaded in fp16 hashes differently from the same one loaded in fp32.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def downsample_factor(vae: nn.Module) -> int:
    """Spatial downsampling f: an H x W image encodes to an (H/f) x (W/f) latent."""
    ratio = getattr(vae, "spatial_compression_ratio", None)
    if ratio:
        return int(ratio)
    cfg: Any = vae.config
    blocks = cfg.get("block_out_channels") or cfg.get("encoder_block_out_channels")
    if not blocks:
        raise AutoencoderError(f"cannot infer the downsampling factor of {type(vae).__name__}")
    return 2 ** (len(blocks) - 1)


def autoencoder_info(vae: nn.Module, spec: str, subfolder: str | None = None) -> dict[str, Any]:
    """The autoencoder's identity, stored in the manifest (JSON-serializable).

    Keys: id (hub id, bundled name, or absolute local path), subfolder, revision (the hub commit it
    was loaded at; None for a local or bundled one), class, config_hash, weights_hash,
    scaling_factor, shift_factor (None -> 0.0), latent_channels, downsample_factor.
    """
    name = type(vae).__name__
    if name not in SUPPORTED_CLASSES:
        raise AutoencoderError(f"autoencoder class {name!r} is not supported")
    cfg: Any = vae.config
    shift = cfg.get("shift_factor")
    local = Path(spec).expanduser()
    if spec not in BUNDLED_AUTOENCODERS and local.exists():
        spec = str(local.resolve())  # the same directory gives the same id from any cwd
    return {
        "id": spec,
        "subfolder": subfolder,
        "revision": getattr(vae, HUB_REVISION_ATTR, None),
        "class": name,
        "config_hash": config_hash(vae),
        "weights_hash": weights_hash(vae),
        "scaling_factor": float(cfg.get("scaling_factor", 1.0)),
        "shift_factor": 0.0 if shift is None else float(shift),
        "latent_channels": int(cfg["latent_channels"]),
        "downsample_factor": downsample_factor(vae),
    }


@torch.no_grad()
def encode_moments(vae: nn.Module, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw posterior moments of images `x_BCHW` in [-1, 1]: (mean, std), each float32 (B, C, h, w).

    Gaussian posteriors: mean and std = exp(logvar / 2) of `vae.encode(x).latent_dist`.
    Deterministic encoders (DC-AE): mean = `vae.encode(x).latent`, std = 0.
    Runs under any active autocast; otherwise the input is cast to the model's dtype.
    """
    kind = SUPPORTED_CLASSES.get(type(vae).__name__)
    if kind is None:
        raise AutoencoderError(f"autoencoder class {type(vae).__name__!r} is not supported")
    param = next(vae.parameters())
    x = x_BCHW.to(param.device, non_blocking=True)
    if not torch.is_autocast_enabled(x.device.type):
        x = x.to(param.dtype)
    out: Any = vae.encode(x)  # type: ignore[operator]  # diffusers' encode, not a Tensor
    if kind == "gaussian":
        dist = out.latent_dist
        return dist.mean.float(), dist.std.float()
    mean = out.latent.float()
    return mean, torch.zeros_like(mean)


def check_store_autoencoder(
    manifest: dict[str, Any], info: dict[str, Any], url: str, *, fix: str
) -> None:
    """Raise `StoreMismatchError` unless `info` (`autoencoder_info`) is the autoencoder that encoded
    the store: same config_hash, and same weights_hash when the manifest records one (a bundled or
    local autoencoder whose weights changed since the encode is caught here: no stale-cache mixing).
    `fix` ends the message (what the user should do)."""

    stored = manifest.get("autoencoder") or {}
    for key in ("config_hash", "weights_hash"):
        if key == "weights_hash" and not stored.get(key):
            continue
        if stored.get(key) != info.get(key):
            raise StoreMismatchError(
                f"{url} was encoded with autoencoder {stored.get('id')!r} ({key} "
                f"{str(stored.get(key))[:12]}), but the autoencoder {info.get('id')!r} loaded now "
                f"has {key} {str(info.get(key))[:12]}; {fix}"
            )
