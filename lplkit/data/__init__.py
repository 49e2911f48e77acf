"""Image sources and preprocessing for encoding.

- `sources`: the registry (`register_source`, `resolve_source`), `Record`, `ImageSource`;
- `folder`, `hf`: the built-in kinds (image folders; hub ids, presets, parquet via `datasets`);
- `transforms`: RGB conversion, ADM center crop, [-1, 1] tensors, flip;
- `prepared`: the DataLoader-side dataset that decodes and crops in worker processes.

Only the registry is imported here (no torch, no datasets).
"""

from lplkit.data.sources import (
    ImageSource,
    Record,
    SourceOptions,
    open_image,
    register_source,
    registered_sources,
    resolve_source,
)

__all__ = [
    "ImageSource",
    "Record",
    "SourceOptions",
    "open_image",
    "register_source",
    "registered_sources",
    "resolve_source",
]
