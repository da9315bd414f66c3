"""Image-quality metrics with an explicit data range."""
from __future__ import annotations

import numpy as np


def psnr(reference: np.ndarray, test: np.ndarray, *, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {test.shape}")
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def _gauss(sigma: float = 1.5, size: int = 11) -> np.ndarray:
    ax = np.arange(size) - size // 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    return g / g.sum()


def _filter(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation with the 1-D kernel ``g`` along both axes."""
    k = g.size
    rows = sum(g[t] * img[:, t : img.shape[1] - k + 1 + t] for t in range(k))
    return sum(g[t] * rows[t : rows.shape[0] - k + 1 + t, :] for t in range(k))


def ssim(reference: np.ndarray, test: np.ndarray, *, data_range: float, k1: float = 0.01, k2: float = 0.03) -> float:
    """Mean SSIM (Wang et al. 2004) with an 11x11 Gaussian window (sigma 1.5), over the valid region.

    With ``data_range=255`` the constants are the reference paper's C1 = 6.5025, C2 = 58.5225.
    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)``.
    """
    if reference.shape != test.shape or reference.ndim != 2:
        raise ValueError(f"need two 2-D images of one shape, got {reference.shape} and {test.shape}")
    if min(reference.shape) < 11:
        raise ValueError(f"images must be at least 11x11 for the SSIM window, got {reference.shape}")
    a, b = reference.astype(np.float64), test.astype(np.float64)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    g = _gauss()
    ma, mb = _filter(a, g), _filter(b, g)
    saa = _filter(a * a, g) - ma * ma
    sbb = _filter(b * b, g) - mb * mb
    sab = _filter(a * b, g) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma * ma + mb * mb + c1) * (saa + sbb + c2))
    return float(s.mean())
