"""Untrusted files: no pickle anywhere in lplkit; manifest / run.json / config / checkpoint meta /
stats attrs validated at load time with clear LplkitError messages (hypothesis fuzzing: only LplkitError
subclasses escape, never a raw KeyError/TypeError); dataset keys cannot make lplkit write outside the
store; the packaged schemas equal the repository's `schemas/`.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lplkit.errors import CheckpointError, ConfigError, LplkitError, StoreCorruptError

ROOT = Path(__file__).resolve().parents[2]
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip

# JSON values (no NaN: JSON has none; zarr attrs and json.dumps refuse it)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


# -------------------------------------------------------------------------------- no pickle


def _pickle_uses(path: Path) -> list[str]:
    """`import pickle` (and friends), `torch.load` without weights_only=True, `np.load` with
    allow_pickle=True, in one source file (found by walking its AST, so comments do not count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if any((n or "").split(".")[0] in banned for n in names):
                found.append(f"{path}:{node.lineno}: imports {names}")
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kw = {k.arg: k.value for k in node.keywords}
        if func.endswith("torch.load") or (func == "load" and "weights_only" in kw):
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(f"{path}:{node.lineno}: {func} without weights_only=True")
        if func in ("np.load", "numpy.load"):
            ap = kw.get("allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"{path}:{node.lineno}: {func} with allow_pickle")
        if func.endswith(("pickle.load", "pickle.loads", "Unpickler")):
            found.append(f"{path}:{node.lineno}: {func}")
    return found


def test_no_pickle_in_lplkit():
    files = sorted((ROOT / "lplkit").rglob("*.py"))
    assert len(files) > 30
    problems = [p for f in files for p in _pickle_uses(f)]
    assert problems == []


def test_the_pickle_scan_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, numpy as np\n"
        "torch.load('x')\ntorch.load('x', weights_only=False)\nnp.load('y', allow_pickle=True)\n"
        "torch.load('ok', weights_only=True)\nnp.load('ok')\n"
    )
    assert len(_pickle_uses(bad)) == 4


def test_the_package_reads_the_one_schemas_folder():
    """`lplkit/schemas` is a link to the repository's `schemas/` (the build backend copies the
    files into the wheel): one source, and what the library validates with is that source."""
    from importlib import resources

    assert (ROOT / "lplkit" / "schemas").resolve() == (ROOT / "schemas").resolve()
    repo = {p.name: p.read_bytes() for p in (ROOT / "schemas").glob("*.json")}
    shipped = resources.files("lplkit").joinpath("schemas")
    assert repo and {n: shipped.joinpath(n).read_bytes() for n in repo} == repo


# -------------------------------------------------------------------------------- manifest


@pytest.fixture(scope="module")
def store_files(tmp_path_factory) -> tuple[dict, Path]:
    from lplkit.store.synthetic import write_synthetic_store

    path = tmp_path_factory.mktemp("u") / "s.zarr"
    write_synthetic_store(path, count=12, shard_size=4, chunk_size=2, latent_shape=(2, 4, 4))
    manifest = dict(zarr.open_group(str(path), mode="r").attrs["lplkit"])
    return manifest, path


def _mutate(doc, path_choice: list[int], value, delete: bool):
    """Replace (or delete) one nested entry of `doc` chosen by `path_choice`."""
    doc = copy.deepcopy(doc)
    node = doc
    for i, c in enumerate(path_choice):
        if not isinstance(node, dict) or not node:
            break
        key = sorted(node)[c % len(node)]
        last = i == len(path_choice) - 1 or not isinstance(node[key], dict) or not node[key]
        if last:
            if delete:
                del node[key]
            else:
                node[key] = value
            break
        node = node[key]
    return doc


mutations = st.tuples(st.lists(st.integers(0, 50), min_size=1, max_size=3), json_values,
                      st.booleans())  # fmt: skip


@FUZZ
@given(m=mutations)
def test_fuzzed_manifest_only_raises_lplkit_errors(store_files, tmp_path_factory, m):
    from lplkit.store import LatentStore, StoreWriter
    from lplkit.store.format import manifest_problems
    from lplkit.store.verify import verify_store

    manifest, pristine = store_files
    doc = _mutate(manifest, *m)
    problems = manifest_problems(doc)  # never raises
    assert isinstance(problems, list)
    path = tmp_path_factory.mktemp("m") / "s.zarr"
    import shutil

    shutil.copytree(pristine, path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["lplkit"] = doc
    (path / "zarr.json").write_text(json.dumps(meta))
    report = verify_store(str(path))  # never raises; reports the manifest
    if problems:
        assert not report.ok and report.problems[0].kind == "manifest"
    try:
        LatentStore.open(str(path))
    except LplkitError:
        pass
    else:
        assert not problems
    try:  # resuming an encode into it
        with StoreWriter.create_or_resume(str(path), manifest):
            pass
    except LplkitError:
        pass
    else:
        assert not problems


def test_resume_into_a_store_with_an_invalid_manifest_is_refused(store_files, tmp_path):
    import shutil

    from lplkit.store import StoreWriter

    manifest, pristine = store_files
    shutil.copytree(pristine, tmp_path / "s.zarr")
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    del meta["attributes"]["lplkit"]["source"]["count"]
    (tmp_path / "s.zarr" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreCorruptError, match=r"stored manifest is invalid.*source"):
        StoreWriter.create_or_resume(str(tmp_path / "s.zarr"), manifest)


# -------------------------------------------------------------------------------- configs


def _train_cfg_dict() -> dict:
    from lplkit.config import to_dict
    from lplkit.train.config import TrainConfig

    return to_dict(TrainConfig(store="s", out="o"))


@FUZZ
@given(m=mutations)
def test_fuzzed_train_config_only_raises_config_errors(m):
    from lplkit.config import from_dict
    from lplkit.train.config import TrainConfig

    with contextlib.suppress(ConfigError):
        from_dict(TrainConfig, _mutate(_train_cfg_dict(), *m))


@FUZZ
@given(doc=json_values)
def test_arbitrary_json_as_train_config_only_raises_config_errors(doc):
    from lplkit.config import from_dict
    from lplkit.train.config import TrainConfig

    with contextlib.suppress(ConfigError):
        from_dict(TrainConfig, doc)


@FUZZ
@given(text=st.text(max_size=80), sets=st.lists(st.text(max_size=20), max_size=3))
def test_fuzzed_toml_and_overrides_only_raise_config_errors(tmp_path_factory, text, sets):
    from lplkit.config import load_config
    from lplkit.train.config import TrainConfig

    path = tmp_path_factory.mktemp("toml") / "c.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with contextlib.suppress(ConfigError):
        load_config(TrainConfig, path, sets)


@FUZZ
@given(doc=json_values, m=mutations)
def test_fuzzed_run_dir_files_only_raise_config_errors(tmp_path_factory, doc, m):
    from lplkit.train.run_dir import load_run

    run = tmp_path_factory.mktemp("run")
    run_json = {"format": 1, "lplkit_version": "0", "model": {}, "num_classes": None,
                "latent_shape": [4, 8, 8], "objective": {}, "normalization": {}, "store": {},
                "world_size": 1}  # fmt: skip
    (run / "config.json").write_text(json.dumps(_mutate(_train_cfg_dict(), *m)))
    (run / "run.json").write_text(json.dumps(doc))
    with contextlib.suppress(ConfigError):
        load_run(run)
    (run / "run.json").write_text(json.dumps(_mutate(run_json, *m)))
    (run / "config.json").write_text(json.dumps(doc))
    with contextlib.suppress(ConfigError):
        load_run(run)


def test_invalid_run_json_names_the_file_and_field(tmp_path):
    from lplkit.config import to_dict
    from lplkit.train.config import TrainConfig
    from lplkit.train.run_dir import load_run

    (tmp_path / "config.json").write_text(json.dumps(to_dict(TrainConfig())))
    (tmp_path / "run.json").write_text(json.dumps({"format": 1, "latent_shape": "4x8x8"}))
    with pytest.raises(ConfigError, match=r"run\.json is invalid.*required property"):
        load_run(tmp_path)


# -------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    import torch

    from lplkit.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("ck")
    w = {"w": torch.arange(4.0)}
    return save_checkpoint(root, 1, w, w, {"step": 1}, keep_last=2, run_id="0" * 32)


@FUZZ
@given(doc=json_values, m=mutations)
def test_fuzzed_checkpoint_meta_only_raises_checkpoint_errors(
    checkpoint_dir, tmp_path_factory, doc, m
):
    import shutil

    from lplkit.train.checkpoint import load_checkpoint_dir, load_latest

    root = tmp_path_factory.mktemp("ckf")
    d = root / checkpoint_dir.name
    shutil.copytree(checkpoint_dir, d)
    meta = json.loads((checkpoint_dir / "meta.json").read_text())
    for bad in (doc, _mutate(meta, *m)):
        (d / "meta.json").write_text(json.dumps(bad))
        try:
            load_checkpoint_dir(d)
        except CheckpointError:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert load_latest(root) is None  # the only checkpoint is skipped, with a warning
            assert any("skipping checkpoint" in str(w.message) for w in caught)


# -------------------------------------------------------------------------------- stats attrs


@FUZZ
@given(m=mutations)
def test_fuzzed_stats_attrs_only_raise_lplkit_errors(tmp_path_factory, m):
    from lplkit.stats.storage import load_stats

    path = tmp_path_factory.mktemp("st") / "s.zarr"
    zarr.open_group(str(path), mode="w")
    stats = zarr.open_group(str(path / "stats"), mode="w")
    run = stats.create_group("run-1")
    run.create_array("latent_mean", shape=(2,), dtype="float64")
    run.create_group("layers")
    pointer = {"format": 1, "current": "run-1"}
    (m_path, value, delete) = m
    stats.attrs["lplkit_stats"] = _mutate(pointer, m_path, value, delete)
    run.attrs["lplkit_stats"] = _mutate(
        {"format": 1, "latent": {"count": 3}}, m_path, value, delete
    )
    with contextlib.suppress(LplkitError):
        load_stats(str(path))


# -------------------------------------------------------------------------------- dataset keys


def test_hostile_dataset_keys_never_become_write_paths(tiny_vae_dir, tmp_path):
    """A source whose keys are `../../x`, absolute paths, NUL bytes...: they are data in the index,
    and nothing is written outside the store."""
    from PIL import Image

    from lplkit.data.sources import ImageSource, Record, SourceOptions, register_source
    from lplkit.encode import EncodeConfig, encode_dataset

    keys = ["../../escape.png", "/tmp/abs-escape.png", "a/../../../b.png", "..", "c\x00d", "~/x"]
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in keys]

    @register_source
    class HostileKeys(ImageSource):
        prefix = "hostile-keys-test"

        def __init__(self) -> None:
            self.source_id, self.split, self.revision = "hostile", None, "1"

        @classmethod
        def from_spec(cls, spec: str, *, split: str | None, options: SourceOptions):
            return cls()

        def __len__(self) -> int:
            return len(keys)

        def __getitem__(self, i: int) -> Record:
            return Record(keys[i], Image.fromarray(arrays[i]), label=i % 2)

    work = tmp_path / "deep" / "er" / "work"
    work.mkdir(parents=True)
    before = {p for p in tmp_path.rglob("*")}
    out = work / "s.zarr"
    cfg = EncodeConfig(dataset="hostile-keys-test:x", out=str(out), vae=str(tiny_vae_dir),
                       res=16, shard_size=4, workers=0, device="cpu")  # fmt: skip
    summary = encode_dataset(cfg)
    assert summary.completed and summary.encoded == len(keys)
    created = {p for p in tmp_path.rglob("*")} - before
    assert created and all(p == out or out in p.parents for p in created), sorted(created)
    assert not Path("/tmp/abs-escape.png").exists()
    assert [r["key"] for r in pq.read_table(out / "index.parquet").to_pylist()] == keys
