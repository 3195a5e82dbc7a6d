"""Log-space numerics in numpy alone (the operator's image has no scipy): the standard
normal's log CDF and log interval mass, accurate in both tails, and log-sum-exp."""

from __future__ import annotations

import math

import numpy as np

LOG_HALF = math.log(0.5)
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_erfc_nonneg(z: np.ndarray) -> np.ndarray:
    """log erfc(z) for z >= 0, relative error < 1.2e-7 (Numerical Recipes' erfcc), no underflow.

    The Chebyshev form is exp(-z^2 + poly(t)) * t, so its log never leaves log space.
    """
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277))))))))
    return np.log(t) - z * z + poly


def log_ndtr(x: np.ndarray) -> np.ndarray:
    """log Phi(x), accurate in both tails."""
    x = np.asarray(x, dtype=float)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        lerfc = _log_erfc_nonneg(np.abs(x) * math.sqrt(0.5))
        upper = np.log1p(-0.5 * np.exp(lerfc))
    out = np.where(x < 0, lerfc + LOG_HALF, upper)
    out = np.where(x == np.inf, 0.0, out)
    return np.where(x == -np.inf, -np.inf, out)


def log_normal_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log(Phi(hi) - Phi(lo)) for lo < hi, from the tail where the difference is not a tiny
    difference of two numbers near 1; a midpoint density where hi - lo is too small for that."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        upper_tail = lo > 0
        a = np.where(upper_tail, -hi, lo)  # Phi(a) < Phi(b) on the side the tail is small
        b = np.where(upper_tail, -lo, hi)
        la, lb = log_ndtr(a), log_ndtr(b)
        diff = lb + np.log(-np.expm1(la - lb))
        mid = 0.5 * (lo + hi)
        narrow = -0.5 * mid * mid - LOG_SQRT_2PI + np.log(hi - lo)
    return np.where(hi - lo < 1e-3, narrow, diff)


def logsumexp(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """log(sum(exp(x))) over `axis`, without overflow; -inf where every term is."""
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.squeeze(np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top,
                          axis=axis)
