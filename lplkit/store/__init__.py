"""The latent store: a sharded Zarr v3 group of posterior moments + a Parquet index.

Public API: `StoreWriter` (encode side), `LatentStore` (read side, training loader), `verify_store`,
`new_manifest`. Layout and guarantees: docs/store-format.md.

Names are re-exported here lazily (PEP 562), so that importing a torch-free submodule
(`lplkit.store.format`, `lock`, `sidecar`, `markers`) does not import zarr and torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lplkit.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lplkit.store.dataset import LatentBatches, LatentDataset
    from lplkit.store.format import FORMAT_VERSION, new_manifest
    from lplkit.store.reader import LatentStore
    from lplkit.store.verify import verify_store
    from lplkit.store.writer import StoreWriter

_EXPORTS = {
    "FORMAT_VERSION": "format",
    "new_manifest": "format",
    "LatentBatches": "dataset",
    "LatentDataset": "dataset",
    "LatentStore": "reader",
    "verify_store": "verify",
    "StoreWriter": "writer",
}
__all__ = [
    "FORMAT_VERSION",
    "LatentBatches",
    "LatentDataset",
    "LatentStore",
    "StoreWriter",
    "new_manifest",
    "verify_store",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
