"""Short names for hub image datasets (`--dataset imagenet`) and the columns to read from them.

Kept apart from `lplkit.data.hf` (which the source registry imports lazily) so that the registry's
error messages can list the names without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A short name for a hub dataset and the columns to read."""

    hub_id: str
    image_column: str
    label_column: str | None
    default_split: str = "train"
    config_name: str | None = None
    note: str = ""


#: Preset names -> hub datasets (parquet-backed on the hub; ImageNet is gated: accept its terms and
#: `hf auth login` first).
PRESETS: dict[str, Preset] = {
    "imagenet": Preset("ILSVRC/imagenet-1k", "image", "label", note="ILSVRC-2012, 1000 classes"),
    "cifar10": Preset("uoft-cs/cifar10", "img", "label", note="32x32, 10 classes"),
    "cifar100": Preset("uoft-cs/cifar100", "img", "fine_label", note="32x32, 100 fine classes"),
    "mnist": Preset("ylecun/mnist", "image", "label", note="28x28 grayscale digits"),
}
