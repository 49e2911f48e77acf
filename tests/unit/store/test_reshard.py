"""`lplkit upgrade` of row-sized (layout 1-2) stores into byte-sized shards (`lplkit.store.reshard`),
interrupted or not; the rows read before and after are compared bitwise."""

from __future__ import annotations

import json
import os

import pytest
import zarr
from helpers.cli import run_cli
from helpers.layouts import (
    N,
    as_layout_2,
    assert_same_arrays,
    assert_same_reads,
    oracle,
    raw_arrays,
    read_all,
    write_test_store,
)

import lplkit.store.reshard as reshard
from lplkit.errors import StoreError
from lplkit.store import LatentStore
from lplkit.store import format as fmt
from lplkit.store.verify import verify_store

# -- lplkit upgrade ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shard_mb", [None, 0.03])
def test_upgrade_of_layout_2_store_keeps_every_row(tmp_path, capsys, shard_mb):
    url = tmp_path / "s.zarr"
    written = write_test_store(url, shard_size=32, chunk_size=8)
    as_layout_2(url)
    before_raw, before_read = (
        raw_arrays(url),
        read_all(url),
    )  # a layout-2 store opens without upgrade
    assert_same_arrays(before_raw, oracle(written))
    assert verify_store(str(url)).ok

    flags = [] if shard_mb is None else ["--shard-mb", str(shard_mb)]
    code, out, _ = run_cli(["upgrade", str(url), *flags, "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    # hand-computed: default 128 MiB -> one shard of the two 64-row chunks covering 97 rows;
    # 0.03 MiB -> 15 rows (31457 // 2052), one chunk
    new = 128 if shard_mb is None else 15
    assert result["layout_version_before"] == 2 and result["layout_version"] == 3
    assert result["resharded"]["shard_size"] == [32, new]
    assert result["resharded"]["shards"] == [4, -(-N // new)]

    m = LatentStore.open(str(url)).manifest
    assert (m["shard_size"], m["layout_version"], m["geometry"]["rule"]) == (new, 3, "bytes")
    group = zarr.open_group(str(url), mode="r", use_consolidated=False)
    assert group[fmt.MOMENTS].shards[0] == new  # the data really is in the new geometry
    assert_same_arrays(raw_arrays(url), before_raw)
    assert_same_reads(read_all(url), before_read)
    report = verify_store(str(url))
    assert report.ok and report.complete_shards == -(-N // new)
    assert sorted(os.listdir(url / fmt.PROGRESS_DIR)) == [
        fmt.shard_name(s) + ".json" for s in range(-(-N // new))
    ]
    assert not (url / fmt.RESHARD_DIR).exists()
    code, out, _ = run_cli(["upgrade", str(url), *flags, "--json"], capsys)
    assert code == 0 and json.loads(out)["changed"] is False


def test_upgrade_interrupted_in_its_swap_is_refused_then_finished(tmp_path, monkeypatch, capsys):
    url = tmp_path / "s.zarr"
    written = write_test_store(url, shard_size=32, chunk_size=8)
    as_layout_2(url)
    before = raw_arrays(url)
    fs_cls = type(reshard.url_to_fs(str(url))[0])
    real_mv, calls = fs_cls.mv, []

    def crash_on_third_move(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 3:  # moments is swapped in, moments_flip is not
            raise OSError(5, "Input/output error")
        return real_mv(self, *args, **kwargs)

    monkeypatch.setattr(fs_cls, "mv", crash_on_third_move)
    code, _, err = run_cli(["upgrade", str(url), "--shard-mb", "0.03"], capsys)
    monkeypatch.setattr(fs_cls, "mv", real_mv)
    assert code == StoreError.exit_code and "Input/output error" in err, err

    with pytest.raises(StoreError, match="re-run `lplkit upgrade"):
        LatentStore.open(str(url))
    code, _, err = run_cli(["upgrade", str(url), "--shard-mb", "0.03"], capsys)
    assert code == 0, err
    assert_same_arrays(raw_arrays(url), before)
    assert_same_arrays(raw_arrays(url), oracle(written))
    assert LatentStore.open(str(url)).manifest["shard_size"] == 15
    assert verify_store(str(url)).ok
