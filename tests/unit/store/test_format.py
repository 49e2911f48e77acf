"""Store format: bfloat16 storage vs torch, geometry, manifest vs the JSON schemas."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest
import torch
from helpers.cli import REPO

from lplkit.store import format as fmt
from lplkit.store.synthetic import write_synthetic_store

SCHEMAS = REPO / "schemas"


def test_bfloat16_storage_matches_torch_rounding():
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.standard_normal(10_000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10_000),
            np.array(
                [0.0, -0.0, np.inf, -np.inf, 1.0, 1 + 2**-8, 1 + 3 * 2**-8, 3.0e38], np.float32
            ),
        ]
    ).astype(np.float32)
    stored = fmt.to_storage(x, "bfloat16")
    assert stored.dtype == np.uint16
    oracle = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(stored, oracle)
    back = fmt.from_storage(stored, "bfloat16")
    np.testing.assert_array_equal(back, torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def test_bfloat16_keeps_nan():
    x = np.array([np.nan, np.float32(np.uint32(0x7F800001).view(np.float32))], np.float32)
    assert np.isnan(fmt.from_storage(fmt.to_storage(x, "bfloat16"), "bfloat16")).all()


@pytest.mark.parametrize(
    ("shard", "chunk", "expected"), [(1024, 64, 64), (10, 64, 10), (100, 64, 50), (7, 3, 1)]
)
def test_chunk_size_divides_shard(shard, chunk, expected):
    assert fmt.chunk_size_for(shard, chunk) == expected


def test_shard_ranges_cover_positions_once():
    count, size = 103, 10
    covered = [
        p for s in range(fmt.n_shards(count, size)) for p in range(*fmt.shard_range(s, count, size))
    ]
    assert covered == list(range(count))
    with pytest.raises(IndexError):
        fmt.shard_range(11, count, size)


def test_identity_differences_name_the_field():
    base = fmt.new_manifest(
        autoencoder={"id": "a", "config_hash": "1"},
        resolution=64,
        latent_shape=(4, 8, 8),
        source={"id": "s", "count": 10},
    )
    other = json.loads(json.dumps(base))
    other["autoencoder"]["config_hash"] = "2"
    other["resolution"] = 128
    diffs = fmt.identity_differences(base, other)
    assert any(d.startswith("autoencoder.config_hash") for d in diffs)
    assert any(d.startswith("resolution") for d in diffs)
    assert fmt.identity_differences(base, json.loads(json.dumps(base))) == []


def test_real_manifest_and_index_validate_against_schemas(tmp_path):
    import pyarrow.parquet as pq
    import zarr

    write_synthetic_store(
        tmp_path / "s.zarr", count=20, flips=True, skipped=[3], shard_size=8, chunk_size=4
    )
    manifest = dict(zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["lplkit"])
    store_schema = json.loads((SCHEMAS / "store.schema.json").read_text())
    index_schema = json.loads((SCHEMAS / "index.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(store_schema)
    jsonschema.Draft202012Validator.check_schema(index_schema)
    jsonschema.validate(manifest, store_schema, cls=jsonschema.Draft202012Validator)
    assert fmt.manifest_problems(manifest) == []
    rows = pq.read_table(tmp_path / "s.zarr" / "index.parquet").to_pylist()
    assert len(rows) == 20
    for row in rows:
        jsonschema.validate(row, index_schema, cls=jsonschema.Draft202012Validator)
    # The schema can fail: a manifest with a bad dtype is rejected by both checks.
    bad = dict(manifest, dtype="float8")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, store_schema, cls=jsonschema.Draft202012Validator)
    assert fmt.manifest_problems(bad)
