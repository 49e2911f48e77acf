"""The standard FID feature extractor: Inception-v3 pool3 (2048-d), only from the user's own file.

lplkit never downloads and never substitutes another network. It loads the TorchScript translation
of TF's `inception-2015-12-05` graph that stylegan2-ada-pytorch, EDM/EDM2 and clean-fid use
(`inception-2015-12-05.pt`, called as `net(images_uint8_NCHW, return_features=True)`; it resizes to
299x299 bilinearly itself, the stylegan2-ada/EDM convention). Search order: `--inception PATH`,
$LPLKIT_INCEPTION, clean-fid's temp dir, torch hub's `checkpoints/`, dnnlib's download cache.
pytorch-fid's and torch-fidelity's `.pth` files are state dicts for their own Python modules, not
this TorchScript file; they are detected and named in the error.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from lplkit.errors import EvaluationError

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
)
FEATURE_DIM = 2048
_STATE_DICT_FILES = (
    "pt_inception-2015-12-05-6726825d.pth",
    "weights-inception-2015-12-05-6726825d.pth",
)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _dnnlib_downloads() -> Path:
    """dnnlib.util.make_cache_dir_path('downloads') of stylegan2-ada / EDM."""
    if "DNNLIB_CACHE_DIR" in os.environ:
        return Path(os.environ["DNNLIB_CACHE_DIR"]) / "downloads"
    return Path.home() / ".cache" / "dnnlib" / "downloads"


def candidate_paths() -> list[Path]:
    """Where the TorchScript weights are looked for when no path is given, in order."""
    paths = []
    if os.environ.get("LPLKIT_INCEPTION"):
        paths.append(Path(os.environ["LPLKIT_INCEPTION"]).expanduser())
    paths += [Path(tempfile.gettempdir()) / INCEPTION_FILE, _hub_checkpoints() / INCEPTION_FILE]
    downloads = _dnnlib_downloads()
    if downloads.is_dir():
        paths += sorted(downloads.glob(f"*_{INCEPTION_FILE}"))
    return paths


def find_inception(path: str | os.PathLike | None = None) -> Path:
    """The weights file to use, or EvaluationError (one line) saying where to put it."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise EvaluationError(f"--inception {p}: no such file (expected {INCEPTION_FILE})")
        return p
    candidates = candidate_paths()
    for p in candidates:
        if p.is_file():
            return p
    found_other = [
        str(_hub_checkpoints() / f) for f in _STATE_DICT_FILES if (_hub_checkpoints() / f).is_file()
    ]
    other = (
        f" (found {', '.join(found_other)}: a pytorch-fid/torch-fidelity state dict, not supported)"
        if found_other
        else ""
    )
    raise EvaluationError(
        f"FID needs the Inception weights {INCEPTION_FILE}, not found{other}: download {INCEPTION_URL} "
        f"and pass --inception PATH or put it in {_hub_checkpoints()} "
        f"(or run with --metrics swd,spectrum)"
    )


def load_inception(path: Path, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """torch.jit.load the feature extractor; EvaluationError if it is not a TorchScript file."""
    try:
        net = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise EvaluationError(
            f"{path} is not a TorchScript Inception ({type(exc).__name__}); use {INCEPTION_URL}"
        ) from exc
    return net.eval()


@torch.no_grad()
def inception_features(net: torch.jit.ScriptModule, images_BCHW: torch.Tensor) -> torch.Tensor:
    """(B, 2048) pool3 features of RGB images in [0, 255] (uint8 or float), float64 on the CPU."""
    device = next(iter(net.parameters()), torch.empty(0)).device
    feats = net(images_BCHW.to(device), return_features=True)
    if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
        raise EvaluationError(
            f"the Inception file returned features of shape {tuple(feats.shape)}, "
            f"expected (batch, {FEATURE_DIM}); use {INCEPTION_URL}"
        )
    return feats.double().cpu()
