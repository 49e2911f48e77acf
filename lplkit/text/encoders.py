"""Load a `transformers` text encoder + its tokenizer and encode captions the way diffusers does.

Supported classes (from the checkpoint config's `architectures` / `model_type`):

| class | family | per-token states | pooled |
| --- | --- | --- | --- |
| `CLIPTextModel` | clip | last or penultimate hidden state | `pooler_output` (EOS token) |
| `CLIPTextModelWithProjection` | clip | last or penultimate hidden state | `text_embeds` (projected) |
| `T5EncoderModel` (also a full T5 checkpoint's encoder) | t5 | last hidden state | none |

Presets name the choices of diffusers' pipelines (`StableDiffusion3Pipeline._get_clip_prompt_embeds`
/ `_get_t5_prompt_embeds`, `StableDiffusionXLPipeline.encode_prompt`, `PixArtSigmaPipeline` /
`PixArtAlphaPipeline.encode_prompt`): the tokenizer pads to `max_length` and truncates; SD3/SDXL
take `hidden_states[-2]` of CLIP (penultimate, before the final layer norm) and never pass the
attention mask to the encoder, SD 1.x takes the last hidden state, PixArt passes T5 the mask.
PixArt's optional caption cleaning (`clean_caption`, needs bs4/ftfy) is not applied.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lplkit.errors import ConfigError, LplkitError
from lplkit.hub import hub_failure
from lplkit.text.spec import (
    DEFAULT_PRESET,
    FAMILIES,
    LAYERS,
    PRESETS,
    bundled_path,
    default_name,
    parse_spec,
)

__all__ = [
    "FAMILIES",
    "PRESETS",
    "TextEncoder",
    "TextEncoderError",
    "default_name",
    "encode_captions",
    "load_text_encoder",
    "parse_spec",
]


class TextEncoderError(LplkitError):
    """A text encoder or its tokenizer cannot be found or loaded."""


_BY_MODEL_TYPE = {
    "clip_text_model": "CLIPTextModel",
    "clip": "CLIPTextModel",
    "t5": "T5EncoderModel",
}


@dataclass
class TextEncoder:
    """A loaded encoder, its tokenizer and the settings its outputs are cached with."""

    model: Any
    tokenizer: Any
    cls: str
    family: str
    preset: str | None
    layer: str
    max_tokens: int
    pass_mask: bool
    pooled: bool
    identity: dict[str, Any]  # id, subfolder, revision, class, config_hash, tokenizer

    @property
    def hidden_size(self) -> int:
        return int(
            self.model.config.hidden_size if self.family == "clip" else self.model.config.d_model
        )

    @property
    def pooled_size(self) -> int | None:
        if not self.pooled:
            return None
        cfg = self.model.config
        return int(
            cfg.projection_dim if self.cls == "CLIPTextModelWithProjection" else cfg.hidden_size
        )

    def entry(self, dtype: str) -> dict[str, Any]:
        """The manifest entry (without completion state) for outputs stored in `dtype`."""
        return {
            **self.identity,
            "family": self.family,
            "preset": self.preset,
            "layer": self.layer,
            "pass_mask": self.pass_mask,
            "max_tokens": self.max_tokens,
            "hidden_size": self.hidden_size,
            "pooled_size": self.pooled_size,
            "dtype": dtype,
        }


def _config(repo: str, subfolder: str | None, revision: str | None) -> tuple[Path, str | None]:
    """config.json of a local dir or hub repo (from the cache offline) and the resolved commit."""
    local = Path(repo).expanduser()
    if local.exists():
        if revision is not None:
            raise ConfigError(
                f"--text-encoder-revision applies to hub ids; {repo!r} is a local directory"
            )
        path = local / (subfolder or "") / "config.json"
        if not path.is_file():
            raise TextEncoderError(f"{path} not found: not a transformers text encoder directory "
                                   "(a pipeline? add :text_encoder)")  # fmt: skip
        return path, None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        found = Path(hf_hub_download(repo, "config.json", subfolder=subfolder, revision=revision))
    except HFValidationError:
        raise ConfigError(
            f"--text-encoder {repo!r} is neither a local directory nor a hub id org/name"
        ) from None
    except Exception as exc:  # every hub failure becomes one actionable line
        sub = f" (subfolder {subfolder!r})" if subfolder else ""
        msg = hub_failure(exc, repo=repo, kind="model", revision=revision)
        raise TextEncoderError(
            f"cannot read the text encoder config of {repo!r}{sub}: {msg}"
        ) from None
    parts = found.parts
    return found, (parts[parts.index("snapshots") + 1] if "snapshots" in parts else None)


def _class_of(config: dict[str, Any], where: Path) -> str:
    for arch in config.get("architectures") or []:
        if arch in FAMILIES:
            return arch
    cls = _BY_MODEL_TYPE.get(str(config.get("model_type")))
    if cls is None:
        raise TextEncoderError(
            f"{where}: text encoder {config.get('architectures') or config.get('model_type')!r} is "
            f"not supported; lplkit caches {', '.join(FAMILIES)}"
        )
    return cls


def _tokenizer_folders(subfolder: str | None) -> list[str | None]:
    """Where a pipeline keeps the tokenizer of `subfolder` (text_encoder_2 -> tokenizer_2), then the
    encoder's own folder."""
    if subfolder and subfolder.startswith("text_encoder"):
        return [subfolder.replace("text_encoder", "tokenizer", 1), subfolder]
    return [subfolder]


def load_text_encoder(
    spec: str,
    *,
    revision: str | None = None,
    preset: str | None = None,
    layer: str | None = None,
    max_tokens: int | None = None,
    device: str | torch.device = "cpu",
) -> TextEncoder:
    """Load `spec` (see `parse_spec`) in eval mode, fp32, from a local dir or the hub cache.

    A hub id is resolved to one commit first; model and tokenizer come from that snapshot.
    `preset` defaults to the family's (`DEFAULT_PRESET`); `layer`/`max_tokens` override it."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # lplkit shows its own progress
    repo, subfolder = parse_spec(spec)
    bundled = bundled_path(repo) if subfolder is None else None
    if bundled is not None:
        if revision is not None:
            raise ConfigError(f"--text-encoder-revision applies to hub ids; {repo!r} is bundled")
        repo = str(bundled)
    cfg_path, commit = _config(repo, subfolder, revision)
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise TextEncoderError(f"{cfg_path} is not a readable JSON config: {exc}") from None
    cls = _class_of(config, cfg_path)
    family = FAMILIES[cls]
    name = preset or DEFAULT_PRESET[family]
    if name not in PRESETS:
        raise ConfigError(f"--text-preset must be one of {', '.join(PRESETS)}, got {name!r}")
    chosen = PRESETS[name]
    if chosen.family != family:
        raise ConfigError(
            f"--text-preset {name} is for {chosen.family} encoders; {spec} is {family}"
        )
    layer = layer or chosen.layer
    if layer not in LAYERS:
        raise ConfigError(f"--text-layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    if family == "t5" and layer != "last":
        raise ConfigError("--text-layer penultimate applies to CLIP encoders; T5 keeps the last")
    path = str(Path(repo).expanduser()) if commit is None else repo
    kw: dict[str, Any] = {"revision": commit} if commit else {}
    try:
        model = getattr(transformers, cls).from_pretrained(path, subfolder=subfolder or "", **kw)
    except (OSError, ValueError) as exc:
        raise TextEncoderError(
            f"cannot load {cls} from {spec!r}: {' '.join(str(exc).split())[:300]}"
        ) from None
    tokenizer, tok_folder = _load_tokenizer(spec, path, subfolder, commit, family)
    L = int(max_tokens or chosen.max_tokens)
    limit = getattr(model.config, "max_position_embeddings", None) if family == "clip" else None
    if limit is not None and int(limit) < L:
        raise ConfigError(f"--text-max-tokens {L} exceeds {spec}'s {limit} positions")
    local = Path(repo).expanduser()
    identity = {
        "id": spec
        if bundled is not None
        else str(local.resolve())
        if commit is None and local.exists()
        else repo,
        "subfolder": subfolder,
        "revision": commit,
        "class": cls,
        "config_hash": _config_hash(model.config.to_dict()),
        "tokenizer": tok_folder,
    }
    model = model.to(device).eval().requires_grad_(False)
    return TextEncoder(model, tokenizer, cls, family, preset if preset else name, layer, L,
                       chosen.pass_mask, chosen.pooled, identity)  # fmt: skip


def _tokenizer_config(path: str, folder: str | None, commit: str | None) -> dict[str, Any] | None:
    """tokenizer_config.json of `folder` (local dir, or the hub snapshot `commit`), None if absent."""
    if commit is None:
        file = Path(path) / (folder or "") / "tokenizer_config.json"
    else:
        from huggingface_hub import hf_hub_download

        try:
            file = Path(hf_hub_download(path, "tokenizer_config.json", subfolder=folder,
                                        revision=commit))  # fmt: skip
        except Exception:  # absent from this snapshot (or its cache): try the next folder
            return None
    try:
        config = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _load_tokenizer(
    spec: str, path: str, subfolder: str | None, commit: str | None, family: str
) -> tuple[Any, str | None]:
    """The tokenizer next to the encoder: its class from tokenizer_config.json (AutoTokenizer would
    also want a model config.json in a pipeline's tokenizer folder, which has none)."""
    import transformers
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    tried = []
    for folder in _tokenizer_folders(subfolder):
        config = _tokenizer_config(path, folder, commit)
        tried.append(folder or ".")
        if config is None:
            continue
        name = str(config.get("tokenizer_class") or "")
        fallback = "CLIPTokenizer" if family == "clip" else "T5Tokenizer"
        cls = tokenizer_class_from_name(name) if name else None
        cls = cls or getattr(transformers, fallback)
        kw: dict[str, Any] = {"revision": commit} if commit else {}
        try:
            return cls.from_pretrained(path, subfolder=folder or "", **kw), folder
        except (OSError, ValueError) as exc:
            msg = " ".join(str(exc).split())[:200]
            raise TextEncoderError(
                f"cannot load the tokenizer of {spec!r} ({folder}): {msg}"
            ) from None
    raise TextEncoderError(
        f"no tokenizer for {spec!r}: no tokenizer_config.json in {', '.join(tried)}"
    )


def _config_hash(config: dict[str, Any]) -> str:
    """sha256 of the config as canonical JSON, without the keys that do not change the model."""
    drop = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures")
    blob = json.dumps(
        {k: v for k, v in config.items() if k not in drop}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@torch.no_grad()
def encode_captions(
    te: TextEncoder, captions: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """({states (B, L, D) float32, mask (B, L) uint8[, pooled (B, P) float32]}, truncated (B,) bool).

    Tokenized as diffusers does (padding="max_length", truncation=True); `truncated` marks captions
    whose tokens (special tokens included) exceed L."""
    tok = te.tokenizer(list(captions), padding="max_length", max_length=te.max_tokens,
                       truncation=True, add_special_tokens=True, return_tensors="pt")  # fmt: skip
    full = te.tokenizer(list(captions), add_special_tokens=True, truncation=False, verbose=False)
    truncated = np.array([len(ids) > te.max_tokens for ids in full["input_ids"]], dtype=bool)
    device = next(te.model.parameters()).device
    ids, mask = tok["input_ids"].to(device), tok["attention_mask"].to(device)
    out = te.model(
        ids,
        attention_mask=mask if te.pass_mask else None,
        output_hidden_states=te.layer == "penultimate",
    )
    states = out.last_hidden_state if te.layer == "last" else out.hidden_states[-2]
    result = {
        "states": states.float().cpu().numpy(),
        "mask": tok["attention_mask"].numpy().astype(np.uint8),
    }
    if te.pooled:
        pooled = out.text_embeds if te.cls == "CLIPTextModelWithProjection" else out.pooler_output
        result["pooled"] = pooled.float().cpu().numpy()
    return result, truncated
