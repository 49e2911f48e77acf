"""Old module paths kept importable after the move into concept subpackages (issue #13).

`import lplkit.lpl_presets` (or `from lplkit.stats_store import load_stats`) still works: a finder
on `sys.meta_path` answers the old name with the new module object itself, so attributes,
`isinstance` checks, monkeypatching and pickles all see one module. New code imports the new paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "install"]

#: old module path -> new module path
MOVED: dict[str, str] = {
    "lplkit.lpl_terms": "lplkit.lpl.terms",
    "lplkit.lpl_presets": "lplkit.lpl.config",
    "lplkit.lpl_crops": "lplkit.lpl.crops",
    "lplkit.decoder_features": "lplkit.lpl.decoder_taps",
    "lplkit.stats_run": "lplkit.stats.job",
    "lplkit.stats_store": "lplkit.stats.storage",
    "lplkit.running_stats": "lplkit.stats.accumulators",
    "lplkit.encode_ranks": "lplkit.distributed",
    "lplkit.sample": "lplkit.samplers",
    "lplkit.train.metrics": "lplkit.train.metrics_log",
    "lplkit.train.sampling": "lplkit.generate",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the target module is already executed


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on `sys.meta_path` (once)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
