"""Fréchet distance on closed-form Gaussians; Inception weight lookup and the FID plumbing."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lplkit.errors import EvaluationError
from lplkit.metrics.evaluate import EvalOptions, evaluate
from lplkit.metrics.frechet import GaussianStats, frechet_distance, trace_sqrt_product
from lplkit.metrics.inception import INCEPTION_FILE, find_inception

METHODS = [
    "eigh",
    pytest.param(
        "scipy",
        marks=pytest.mark.skipif(
            not __import__("importlib").util.find_spec("scipy"), reason="scipy not installed"
        ),
    ),
]


def _random_cov(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_covariances_closed_form(method):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(GaussianStats(mu1, np.diag(s1)), GaussianStats(mu2, np.diag(s2)), method)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_scaled_full_covariance_closed_form(method):
    # S2 = a^2 S1  =>  Tr(S1 + S2 - 2 (S1 S2)^1/2) = (1 - a)^2 Tr S1, for any non-diagonal S1
    s1, a = _random_cov(8, seed=1), 1.7
    mu = np.zeros(8)
    got = frechet_distance(GaussianStats(mu, s1), GaussianStats(mu + 0.5, a**2 * s1), method)
    assert got == pytest.approx(8 * 0.25 + (1 - a) ** 2 * np.trace(s1), rel=1e-9)


def test_rotation_of_a_diagonal_gaussian_and_identity():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    s1, s2 = rng.uniform(0.2, 2, 5), rng.uniform(0.2, 2, 5)
    # the same orthogonal change of basis on both: the distance is basis-invariant
    a = GaussianStats(q @ np.ones(5), q @ np.diag(s1) @ q.T)
    b = GaussianStats(np.zeros(5), q @ np.diag(s2) @ q.T)
    assert frechet_distance(a, b) == pytest.approx(5 + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2))
    s = _random_cov(6, seed=3)
    assert abs(frechet_distance(GaussianStats(np.ones(6), s), GaussianStats(np.ones(6), s))) < 1e-9


def test_singular_covariances_stay_finite_and_nonnegative():
    f1 = np.random.default_rng(4).normal(size=(5, 32))  # rank 4 < 32
    f2 = np.random.default_rng(5).normal(size=(5, 32))
    d = frechet_distance(GaussianStats.from_features(f1), GaussianStats.from_features(f2))
    assert np.isfinite(d) and d > 0
    assert trace_sqrt_product(np.eye(3), np.zeros((3, 3))) == 0.0


# ---- Inception weights: lookup, refusal, plumbing with a stand-in TorchScript file ---------------


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Every place the weights are searched points into an empty tmp dir."""
    for var in ("LPLKIT_INCEPTION", "DNNLIB_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return tmp_path


_DIM = 64  # the real net gives 2048-d features; 64 keeps the 2048^2 eigendecompositions out of the test


class _StandIn(torch.nn.Module):
    """Same call convention as inception-2015-12-05.pt; features from 4x4 average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Parameter(
            torch.randn(48, _DIM, generator=torch.Generator().manual_seed(0))
        )

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return F.adaptive_avg_pool2d(img.to(torch.float32), 4).flatten(1) @ self.proj


def _np_features(images_nhwc: np.ndarray, proj: np.ndarray) -> np.ndarray:
    n, h, w, c = images_nhwc.shape
    pooled = images_nhwc.astype(np.float64).reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4))
    return pooled.transpose(0, 3, 1, 2).reshape(n, -1) @ proj


@pytest.fixture
def stand_in(tmp_path, monkeypatch) -> tuple[str, np.ndarray]:
    monkeypatch.setattr("lplkit.metrics.inception.FEATURE_DIM", _DIM)
    net = _StandIn()
    path = tmp_path / INCEPTION_FILE
    torch.jit.script(net).save(str(path))
    return str(path), net.proj.detach().double().numpy()


def test_fid_without_weights_raises_one_line_error(no_caches, tmp_path):
    np.savez(tmp_path / "a.npz", np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(EvaluationError) as err:
        evaluate(str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), EvalOptions(metrics=["fid"]))
    msg = str(err.value)
    assert "\n" not in msg and INCEPTION_FILE in msg and "--inception" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg


def test_state_dict_files_are_named_not_used(no_caches):
    ckpt = no_caches / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, ckpt / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(EvaluationError, match="pytorch-fid/torch-fidelity state dict"):
        find_inception()
    with pytest.raises(EvaluationError, match="not a TorchScript"):
        evaluate(
            "x",
            "y",
            EvalOptions(metrics=["fid"], inception=ckpt / "pt_inception-2015-12-05-6726825d.pth"),
        )


def test_weights_found_in_caches(no_caches, stand_in, monkeypatch):
    ckpt = no_caches / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / INCEPTION_FILE).write_bytes(Path(stand_in[0]).read_bytes())
    assert find_inception() == ckpt / INCEPTION_FILE
    dl = no_caches / "dnnlib" / "downloads"
    dl.mkdir(parents=True)
    (dl / f"0123abcd_{INCEPTION_FILE}").write_bytes(b"x")
    monkeypatch.setenv("DNNLIB_CACHE_DIR", str(no_caches / "dnnlib"))
    (ckpt / INCEPTION_FILE).unlink()
    assert find_inception() == dl / f"0123abcd_{INCEPTION_FILE}"
    monkeypatch.setenv("LPLKIT_INCEPTION", stand_in[0])
    assert str(find_inception()) == stand_in[0]
    with pytest.raises(EvaluationError, match="no such file"):
        find_inception(no_caches / "missing.pt")


def test_fid_with_stand_in_matches_numpy_features(tmp_path, stand_in):
    path, proj = stand_in
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "a.npz", a)
    np.savez(tmp_path / "b.npz", b)
    opts = EvalOptions(metrics=["fid"], inception=path, batch_size=5)
    got = evaluate(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), opts)["fid"]
    fa, fb = _np_features(a, proj), _np_features(b, proj)
    expected = frechet_distance(
        GaussianStats(fa.mean(0), np.cov(fa, rowvar=False)),
        GaussianStats(fb.mean(0), np.cov(fb, rowvar=False)),
    )
    assert got["ref_stats"] == "images" and got["value"] == pytest.approx(
        expected, rel=1e-5
    )  # float32 features
    same = evaluate(str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), opts)["fid"]["value"]
    assert abs(same) < 1e-6 * expected
    # an ADM reference batch: mu/sigma only -> used as the reference statistics
    np.savez(tmp_path / "ref.npz", mu=fb.mean(0), sigma=np.cov(fb, rowvar=False))
    adm = evaluate(str(tmp_path / "a.npz"), str(tmp_path / "ref.npz"), opts)["fid"]
    assert adm["ref_stats"] == "npz mu/sigma" and adm["value"] == pytest.approx(
        expected, rel=1e-5
    )  # float32 features
    np.savez(tmp_path / "bad.npz", mu=np.zeros(5), sigma=np.eye(5))
    with pytest.raises(EvaluationError, match="not pool3 statistics"):
        evaluate(str(tmp_path / "a.npz"), str(tmp_path / "bad.npz"), opts)
    with pytest.raises(EvaluationError, match="no images"):
        evaluate(str(tmp_path / "a.npz"), str(tmp_path / "ref.npz"), EvalOptions(metrics=["swd"]))
