"""Fréchet distance between Gaussians fitted to feature sets (FID when the features are Inception's).

For N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; Heusel et al. 2017):

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

Tr (S1 S2)^{1/2} = sum_i sqrt(lambda_i) where lambda_i are the eigenvalues of S1 S2, which equal those
of the symmetric PSD matrix S1^{1/2} S2 S1^{1/2}. The default ("eigh") uses that symmetric form in
float64 (no complex round-off to discard); "scipy" uses `scipy.linalg.sqrtm(S1 @ S2)` as pytorch-fid
and clean-fid do, when scipy is installed. For diagonal S1 = diag(s1), S2 = diag(s2) it reduces to
||mu1 - mu2||^2 + sum_i (s1_i + s2_i - 2 sqrt(s1_i s2_i)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, float64."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int | None = None

    @classmethod
    def from_features(cls, features_ND: np.ndarray) -> GaussianStats:
        """Sample mean and unbiased covariance (np.cov, rowvar=False) as in every FID tool."""
        f = np.asarray(features_ND, dtype=np.float64)
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
        return cls(mu=f.mean(axis=0), sigma=np.cov(f, rowvar=False), count=f.shape[0])


def _clip_rank(w: np.ndarray) -> np.ndarray:
    """Eigenvalues below round-off (numpy.linalg.matrix_rank's tolerance) are zeros, not noise.

    Few samples in 2048-d give rank-deficient covariances whose null-space eigenvalues come out as
    +-eps*|S|; their square roots would otherwise add up to a visible bias.
    """
    tol = w.max(initial=0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clip_rank(w))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: str = "eigh") -> float:
    """Tr (S1 S2)^{1/2} for symmetric PSD S1, S2."""
    if method == "eigh":
        r1 = _psd_sqrt(s1)
        m = r1 @ s2 @ r1
        lam = np.linalg.eigvalsh((m + m.T) / 2)
        return float(np.sqrt(_clip_rank(lam)).sum())
    if method == "scipy":
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # singular product: offset as pytorch-fid does
            eps = np.eye(s1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
        return float(np.real(np.trace(covmean)))
    raise ValueError(f"unknown method {method!r} (use 'eigh' or 'scipy')")


def frechet_distance(a: GaussianStats, b: GaussianStats, method: str = "eigh") -> float:
    """||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^{1/2}."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"feature sizes differ: {a.mu.shape} vs {b.mu.shape}")
    diff = a.mu - b.mu
    tr = np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_sqrt_product(a.sigma, b.sigma, method)
    return float(diff @ diff + tr)
