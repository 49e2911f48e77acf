"""Old module paths (before the concept subpackages of issue #13) import the new module objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from lplkit.moved_modules import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module(old):
    new = importlib.import_module(MOVED[old])
    assert importlib.import_module(old) is new
    assert sys.modules[old] is new


def test_old_from_imports_and_attribute_access():
    from lplkit.lpl_presets import LPLConfig as old_cfg
    from lplkit.stats_store import load_stats

    import lplkit.stats.storage
    from lplkit.lpl.config import LPLConfig as new_cfg

    assert old_cfg is new_cfg
    assert load_stats is lplkit.stats.storage.load_stats


def test_package_reexports():
    import lplkit.lpl
    import lplkit.stats
    from lplkit.lpl.loss import LatentPerceptualLoss
    from lplkit.stats.compute import compute_stats

    assert lplkit.lpl.LatentPerceptualLoss is LatentPerceptualLoss
    assert lplkit.stats.compute_stats is compute_stats
    for pkg in (lplkit.lpl, lplkit.stats):
        assert set(pkg.__all__) <= set(dir(pkg))
        for name in pkg.__all__:
            assert getattr(pkg, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lplkit.lpl.nope  # noqa: B018


def test_unknown_old_name_is_still_an_import_error():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("lplkit.lpl_nonexistent")


def test_package_imports_stay_torch_free():
    code = (
        "import sys, lplkit.lpl, lplkit.stats, lplkit.lpl.config, lplkit.lpl_presets\n"
        "import lplkit.store, lplkit.store.format, lplkit.store.lock, lplkit.train.run_dir\n"
        "heavy = [m for m in ('torch', 'zarr') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_store_package_names_resolve_to_their_submodules():
    import lplkit.store as store
    from lplkit.store import dataset, format, reader, verify, writer

    assert store.LatentStore is reader.LatentStore
    assert store.StoreWriter is writer.StoreWriter
    assert store.verify_store is verify.verify_store
    assert store.LatentDataset is dataset.LatentDataset
    assert store.LatentBatches is dataset.LatentBatches
    assert store.new_manifest is format.new_manifest
    assert store.FORMAT_VERSION == format.FORMAT_VERSION
    assert sorted(dir(store)) == sorted(store.__all__)
