"""Prompts -> a text model's condition, with the text encoder(s) its run was trained on.

run.json ``text_encoders`` lists the store encoders the model reads, in the order it combines them,
each with the identity the store cached it under (id, subfolder, revision, class, preset, layer,
max_tokens, config_hash). Sampling loads each one again at that identity, offline:

  hub id        the recorded commit from the local hub cache (never the network): a missing
                snapshot is refused in one line naming the id, the revision and how to get it
  directory     the recorded absolute path (must still exist)
  bundled name  the package's copy (``lplkit.text.spec.BUNDLED_TEXT_ENCODERS``)

and refuses an encoder whose config no longer hashes to the recorded ``config_hash`` (another
model under the same name). Prompts are then encoded exactly as the store encoded captions
(`lplkit.text.encoders.encode_captions`: padded to L, truncated, the preset's layer) and combined
with `lplkit.diffusion.text_conditioning.combine` (SD3's rule) in the recorded order:

  cond = combine([(family_k, encode_k(prompts)) for k in run.json text_encoders])
  null = combine([(family_k, encode_k([""])) ...])          (classifier-free guidance)
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lplkit.diffusion import text_conditioning as tc
from lplkit.errors import ConfigError
from lplkit.text.encoders import TextEncoder, TextEncoderError, encode_captions, load_text_encoder
from lplkit.text.spec import BUNDLED_TEXT_ENCODERS

__all__ = ["RunTextEncoders", "load_run_text_encoders", "read_prompts_file"]

_CACHED_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _spec(entry: Mapping[str, Any]) -> str:
    """The `load_text_encoder` spec of a recorded entry: ``id`` or ``id:subfolder``."""
    sub = entry.get("subfolder")
    return f"{entry['id']}:{sub}" if sub else str(entry["id"])


def _require_cached(entry: Mapping[str, Any]) -> None:
    """One line when the recorded encoder cannot be loaded offline (before transformers tries)."""
    repo, rev, sub = str(entry["id"]), entry.get("revision"), entry.get("subfolder")
    if repo in BUNDLED_TEXT_ENCODERS:
        return
    if rev is None:  # a local directory, recorded as its absolute path
        folder = Path(repo) / (sub or "")
        if not (folder / "config.json").is_file():
            raise TextEncoderError(
                f"this run's text encoder {_spec(entry)} is no longer there ({folder} has no "
                "config.json): restore that directory to sample from the run"
            )
        return
    from huggingface_hub import snapshot_download

    from lplkit.hub import hub_cache_dir

    found: Path | None = None
    with contextlib.suppress(Exception):  # not in the cache: the line below says what to do
        found = Path(snapshot_download(repo, revision=rev, local_files_only=True))
    snapshot = None if found is None else found / (sub or "")
    if snapshot is None or not (snapshot / "config.json").is_file():
        raise TextEncoderError(
            f"this run's text encoder {_spec(entry)} at revision {rev} is not in the local hub "
            f"cache ({hub_cache_dir()}): download it once with network access "
            f"(`hf download {repo} --revision {rev}`) or set HF_HOME to the cache that holds it"
        )


class RunTextEncoders:
    """The loaded encoders of a run (run.json ``text_encoders``), in the recorded order."""

    def __init__(self, record: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu"):
        self.names = [str(e["name"]) for e in record]
        self.families: list[str] = []
        self.encoders: list[TextEncoder] = []
        self.dtypes = [_CACHED_DTYPES[str(e.get("dtype") or "float32")] for e in record]
        for entry in record:
            _require_cached(entry)
            te = load_text_encoder(_spec(entry), revision=entry.get("revision"),
                                   preset=entry.get("preset"), layer=entry.get("layer"),
                                   max_tokens=entry.get("max_tokens"), device=device)  # fmt: skip
            want = entry.get("config_hash")
            if want and te.identity["config_hash"] != want:
                raise TextEncoderError(
                    f"this run's text encoder {_spec(entry)} has changed since training (config "
                    f"hash {te.identity['config_hash'][:12]}, recorded {str(want)[:12]}): "
                    "sample with the encoder the run was trained on"
                )
            self.families.append(str(entry.get("family") or te.family))
            self.encoders.append(te)

    def encode(self, prompts: Sequence[str], *, as_cached: bool = False) -> tc.TextCond:
        """The combined condition of ``prompts`` (B rows; states/pooled float32, mask bool).

        ``as_cached`` rounds the states to the dtype the store cached them in (float16 by
        default), so a prompt that is a training caption conditions the model exactly as the
        cached caption did (the t2i demo); the default keeps float32, as diffusers' pipelines
        encode prompts (`lplkit export` round trips)."""
        parts = []
        for family, te, dtype in zip(self.families, self.encoders, self.dtypes, strict=True):
            got, _ = encode_captions(te, list(prompts))
            cond = {k: torch.from_numpy(v) for k, v in got.items()}
            cond["mask"] = cond["mask"].bool()  # as the store's text reads back
            if as_cached:
                cond = {k: v if k == "mask" else v.to(dtype).float() for k, v in cond.items()}
            parts.append((family, cond))
        return tc.combine(parts)


def load_run_text_encoders(
    info: Mapping[str, Any], device: str | torch.device = "cpu"
) -> RunTextEncoders:
    """The encoders of run.json ``info`` (see module); ConfigError for a run that records none."""
    record = info.get("text_encoders")
    if not record:
        raise ConfigError("this run records no text encoders: it is not a text-to-image run")
    return RunTextEncoders(record, device)


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per line of a UTF-8 text file (surrounding whitespace and blank lines dropped)."""
    p = Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--prompts {p}: cannot read it ({exc})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"--prompts {p}: no prompts (one per line)")
    return prompts
