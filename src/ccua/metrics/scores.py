"""Metrics computed from feature vectors: FID, KID, improved precision/recall, IS, accuracy.

Everything is float64 and vectorised. Inputs are [N, D] arrays or tensors of any float type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

# Eigenvalues below this fraction of the largest count as zero when flagging a singular covariance.
RANK_RTOL = 1e-10
# KID precomputes the full kernel matrices when both sets are at most this large (~72 MB each).
FULL_KERNEL_LIMIT = 3000


def _as_float64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    return x


@dataclass
class GaussianStats:
    """Mean, covariance (ddof 1) and sample count of a feature set."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    @classmethod
    def from_features(cls, features: Any) -> "GaussianStats":
        x = _as_float64(features)
        if len(x) < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {len(x)}")
        return cls(x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1]), len(x))


@dataclass
class FrechetResult:
    """An FID value and whether it rests on a singular (or nearly singular) covariance."""

    value: float
    rank_deficient: bool
    n1: int | None = None
    n2: int | None = None
    route: str = "eigh"


def _psd_sqrt(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric square root of a PSD matrix via eigh; tiny negative eigenvalues are set to 0."""
    w, v = scipy.linalg.eigh(sigma)
    w = np.clip(w, 0.0, None)
    return (v * np.sqrt(w)) @ v.T, w


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     n1: int | None = None, n2: int | None = None) -> FrechetResult:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), by eigen-decompositions.

    tr sqrt(S1 S2) equals tr sqrt(M) with the symmetric M = sqrt(S1) S2 sqrt(S1) (same
    eigenvalues), so it is the sum of the square roots of M's eigenvalues, negatives clipped to 0.
    Unlike scipy's sqrtm of the non-symmetric S1 S2 this never yields an imaginary part, and it is
    several times faster at 2048 dimensions.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    root1, w1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    middle = (middle + middle.T) / 2  # symmetric up to rounding; make it exactly so for eigvalsh
    ev = scipy.linalg.eigvalsh(middle)
    trace_sqrt = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    d = len(mu1)
    # M is singular whenever S1 or S2 is, so its spectrum flags either.
    singular = (w1.min() <= RANK_RTOL * max(w1.max(), 1e-300)) or (ev.min() <= RANK_RTOL * max(ev.max(), 1e-300))
    too_few = (n1 is not None and n1 <= d) or (n2 is not None and n2 <= d)
    return FrechetResult(max(value, 0.0), bool(singular or too_few), n1, n2, "eigh")


def _frechet_low_rank(x1: np.ndarray, x2: np.ndarray) -> FrechetResult:
    """The same distance from the samples, cheap when they are few against the dimension.

    With S1 = A A^T and S2 = B B^T (A, B the centred samples / sqrt(n - 1), d x n), the nonzero
    eigenvalues of S1 S2 are those of C^T C with the small n1 x n2 matrix C = A^T B, so
    tr sqrt(S1 S2) is the sum of C's singular values: the square roots of the eigenvalues of the
    symmetric C C^T (or C^T C, whichever is smaller). Exact, and far cheaper than two d x d
    eigen-decompositions for per-class sets of a few hundred images in 2048 dimensions.
    """
    a = (x1 - x1.mean(0)) / np.sqrt(len(x1) - 1)
    b = (x2 - x2.mean(0)) / np.sqrt(len(x2) - 1)
    c = a @ b.T
    gram = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
    nuclear = float(np.sqrt(np.clip(scipy.linalg.eigvalsh(gram), 0.0, None)).sum())
    diff = x1.mean(0) - x2.mean(0)
    value = float(diff @ diff + (a * a).sum() + (b * b).sum() - 2.0 * nuclear)
    d = x1.shape[1]
    return FrechetResult(max(value, 0.0), len(x1) <= d or len(x2) <= d, len(x1), len(x2), "low_rank")


def fid_from_features(features1: Any, features2: Any, stats1: GaussianStats | None = None,
                      stats2: GaussianStats | None = None) -> FrechetResult:
    """FID between two feature sets (>= 2 samples each).

    Picks the cheaper exact route: the sample route of :func:`_frechet_low_rank` when both sets
    are small against the dimension, otherwise :func:`frechet_distance` on the covariances
    (precomputed ``stats`` are used when given).
    """
    x1, x2 = _as_float64(features1), _as_float64(features2)
    n1, n2, d = len(x1), len(x2), x1.shape[1]
    if n1 < 2 or n2 < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {n1} and {n2}")
    if x2.shape[1] != d:
        raise ValueError(f"feature dimensions differ: {d} vs {x2.shape[1]}")
    small, large = sorted((n1, n2))
    # Rough operation counts, an eigen-decomposition weighted ~10x a matmul of the same size.
    cost_low_rank = n1 * n2 * d + small * small * large + 10 * small ** 3
    cost_eigh = (n1 * (stats1 is None) + n2 * (stats2 is None)) * d * d + 24 * d ** 3
    if cost_low_rank < cost_eigh:
        return _frechet_low_rank(x1, x2)
    s1 = stats1 or GaussianStats.from_features(x1)
    s2 = stats2 or GaussianStats.from_features(x2)
    return frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma, n1, n2)


def kid(features1: Any, features2: Any, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float, int]:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3.

    Averaged over ``num_subsets`` random subsets (without replacement within a subset) of size
    m = min(subset_size, n1, n2) from each set. Returns (mean, std over subsets, m).
    """
    x1 = torch.from_numpy(_as_float64(features1))
    x2 = torch.from_numpy(_as_float64(features2))
    n1, n2, d = len(x1), len(x2), x1.shape[1]
    m = min(subset_size, n1, n2)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n1} and {n2}")
    kernel = lambda a, b: (a @ b.transpose(-1, -2) / d + 1) ** 3  # noqa: E731
    # Small sets: the full kernel matrices once; a subset's kernel sum is then s^T K s with its
    # 0/1 indicator vector s, one small matmul for many subsets. Large sets: kernels per subset.
    full = n1 <= FULL_KERNEL_LIMIT and n2 <= FULL_KERNEL_LIMIT
    if full:
        k11, k22, k12 = kernel(x1, x1), kernel(x2, x2), kernel(x1, x2)
    generator = torch.Generator().manual_seed(seed)
    draws = [(torch.randperm(n1, generator=generator)[:m], torch.randperm(n2, generator=generator)[:m])
             for _ in range(num_subsets)]
    values = np.empty(num_subsets)
    chunk = max(1, int(64e6 // (3 * 8 * (max(n1, n2) if full else m * m))))
    for start in range(0, num_subsets, chunk):
        count = min(chunk, num_subsets - start)
        idx1 = torch.stack([draws[i][0] for i in range(start, start + count)])
        idx2 = torch.stack([draws[i][1] for i in range(start, start + count)])
        if full:
            s1 = torch.zeros(count, n1, dtype=torch.float64).scatter_(1, idx1, 1.0)
            s2 = torch.zeros(count, n2, dtype=torch.float64).scatter_(1, idx2, 1.0)
            sum_aa, sum_bb = ((s1 @ k11) * s1).sum(1), ((s2 @ k22) * s2).sum(1)
            diag_aa, diag_bb = s1 @ torch.diagonal(k11), s2 @ torch.diagonal(k22)
            sum_ab = ((s1 @ k12) * s2).sum(1)
        else:
            a, b = x1[idx1], x2[idx2]  # [count, m, d]
            k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
            sum_aa, sum_bb, sum_ab = k_aa.sum((1, 2)), k_bb.sum((1, 2)), k_ab.sum((1, 2))
            diag_aa = torch.diagonal(k_aa, dim1=1, dim2=2).sum(1)
            diag_bb = torch.diagonal(k_bb, dim1=1, dim2=2).sum(1)
        # unbiased: the diagonal (a sample with itself) is left out of the within-set means
        mmd = (sum_aa - diag_aa) / (m * (m - 1)) + (sum_bb - diag_bb) / (m * (m - 1)) - 2 * sum_ab / (m * m)
        values[start:start + count] = mmd.numpy()
    return float(values.mean()), float(values.std()), int(m)


def _kth_neighbour_radii(x: torch.Tensor, k: int, block: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row."""
    radii = torch.empty(len(x), dtype=x.dtype)
    for start in range(0, len(x), block):
        dist = torch.cdist(x[start:start + block], x)
        # the k+1 smallest include the point itself (distance 0)
        radii[start:start + block] = dist.topk(k + 1, dim=1, largest=False).values[:, k]
    return radii


def _coverage(queries: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    """Fraction of queries that fall inside at least one ball (centre, radius)."""
    inside = 0
    for start in range(0, len(queries), block):
        dist = torch.cdist(queries[start:start + block], centres)
        inside += int((dist <= radii[None, :]).any(1).sum())
    return inside / len(queries)


def precision_recall(real: Any, fake: Any, k: int = 3, max_block_bytes: float = 256e6) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k nearest neighbours.

    Each set's manifold is the union of balls around its samples, radius = distance to the k-th
    nearest neighbour within the set (the sample itself excluded). Precision = fraction of fake
    samples inside the real manifold; recall = fraction of real samples inside the fake one.
    Needs more than k samples in each set.
    """
    r = torch.from_numpy(_as_float64(real))
    f = torch.from_numpy(_as_float64(fake))
    if len(r) <= k or len(f) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, "
                         f"got {len(r)} real and {len(f)} generated")
    block = max(1, int(max_block_bytes // (8 * max(len(r), len(f)))))
    real_radii = _kth_neighbour_radii(r, k, block)
    fake_radii = _kth_neighbour_radii(f, k, block)
    return _coverage(f, r, real_radii, block), _coverage(r, f, fake_radii, block)


def inception_score(logits: Any, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) per split; mean and std over ``splits`` consecutive splits."""
    logits = torch.as_tensor(logits).double()
    if len(logits) < 2:
        raise ValueError("the Inception Score needs at least 2 samples")
    splits = max(1, min(splits, len(logits)))
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for part in torch.tensor_split(log_p, splits):
        log_marginal = torch.logsumexp(part, 0) - np.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores)), float(np.std(scores))


def class_accuracy(logits: Any, labels: Any) -> float:
    """Fraction of images whose arg-max logit is their conditioning label."""
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(np.asarray(labels)).long()
    if len(labels) == 0:
        raise ValueError("no images")
    return float((logits.argmax(1) == labels).double().mean())
