"""Which autoencoder `lplkit encode` uses when `--vae` is omitted, and the choices it suggests.

Kept apart from `lplkit.autoencoders.loading` (which imports torch) so that `--help` and the missing-`--vae`
error stay instant.
"""

from __future__ import annotations

__all__ = [
    "COMMON_AUTOENCODERS",
    "DEFAULT_AUTOENCODER_DATASET",
    "autoencoder_choices",
    "default_autoencoder",
    "missing_vae_message",
]

#: Shown when `--vae` is missing: common diffusers autoencoders on the hub (id, subfolder, what).
COMMON_AUTOENCODERS: tuple[tuple[str, str | None, str], ...] = (
    ("stabilityai/sd-vae-ft-ema", None, "SD 1.x/2.x, f8 c4"),
    ("stabilityai/sdxl-vae", None, "SDXL, f8 c4"),
    ("stabilityai/stable-diffusion-3-medium-diffusers", "vae", "SD3, f8 c16, gated"),
    ("black-forest-labs/FLUX.1-schnell", "vae", "FLUX.1, f8 c16"),
)


#: The only dataset encoded with the bundled autoencoder when `--vae` is omitted (it was trained on it).
DEFAULT_AUTOENCODER_DATASET = "openmoji"


def default_autoencoder(dataset: str | None = DEFAULT_AUTOENCODER_DATASET) -> str | None:
    """The autoencoder used when `--vae` is omitted for `dataset`: the bundled `tiny-openmoji` for
    `--dataset openmoji` (its training set), None (`--vae` is required) for anything else, so no
    dataset is silently encoded with an emoji autoencoder."""
    name = DEFAULT_AUTOENCODER_DATASET
    if dataset is not None and (dataset == name or dataset.startswith(f"{name}:")):
        return "tiny-openmoji"
    return None


def autoencoder_choices() -> str:
    """One line of `--vae` choices for the missing-`--vae` error and `--help`."""
    hub = "; ".join(
        f"{repo}{' --vae-subfolder ' + sub if sub else ''} ({what})"
        for repo, sub, what in COMMON_AUTOENCODERS
    )
    return f"{hub}; tiny-openmoji (bundled, for --dataset openmoji only); or a local diffusers dir"


def missing_vae_message(dataset: str) -> str:
    """The one-line error when `--vae` is omitted for a dataset other than openmoji."""
    return (
        f"--vae is required for --dataset {dataset!r} (the bundled tiny-openmoji autoencoder is the "
        f"default only for --dataset openmoji); common choices: {autoencoder_choices()}"
    )
