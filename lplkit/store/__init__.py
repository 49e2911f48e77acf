"""The latent store: a sharded Zarr v3 group of posterior moments + a Parquet index.

Public API: `StoreWriter` (encode side), `LatentStore` (read side, training loader), `verify_store`,
`new_manifest`. Layout and guarantees: docs/store-format.md.
"""

from lplkit.store.dataset import LatentBatches, LatentDataset
from lplkit.store.format import FORMAT_VERSION, new_manifest
from lplkit.store.reader import LatentStore
from lplkit.store.verify import verify_store
from lplkit.store.writer import StoreWriter

__all__ = [
    "FORMAT_VERSION",
    "LatentBatches",
    "LatentDataset",
    "LatentStore",
    "StoreWriter",
    "new_manifest",
    "verify_store",
]
