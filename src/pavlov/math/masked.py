"""Masked reductions: means and whitening over the valid entries of a padded batch.

Every loss in :mod:`pavlov.math` reduces through :func:`masked_mean`, so "which entries count"
has one definition. A mask is boolean (or 0/1 float) and broadcastable to ``x``; ``mask=None``
means every entry counts. Entries outside the mask never reach the result, even if they are NaN.

These live in their own module so that :mod:`pavlov.math.policy` and
:mod:`pavlov.math.sequence` can both import them without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["masked_mean", "masked_sum", "masked_var", "masked_whiten"]

Dim = int | tuple[int, ...] | None


def _keep(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(x with masked-out entries set to 0, mask as x.dtype broadcast to x.shape)``."""
    if mask is None:
        return x, torch.ones_like(x)
    m = torch.broadcast_to(mask, x.shape).bool()
    # torch.where, not x * m: a NaN/inf in a padded position must not leak into the sum.
    return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)), m.to(x.dtype)


def _sum(x: Tensor, dim: Dim) -> Tensor:
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_sum(x: Tensor, mask: Tensor | None, dim: Dim = None) -> Tensor:
    """Sum of ``x`` over the entries where ``mask`` is true.

    Args:
        x: any shape, floating point.
        mask: bool or 0/1, broadcastable to ``x``; ``None`` keeps every entry.
        dim: dimension(s) to reduce; ``None`` reduces everything to a scalar.

    Returns:
        ``x.sum(dim)``'s shape, counting only the kept entries.
    """
    kept, _ = _keep(x, mask)
    return _sum(kept, dim)


def masked_mean(x: Tensor, mask: Tensor | None, dim: Dim = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true.

    ``sum(x[mask]) / count(mask)`` along ``dim``. Where nothing is kept the count is clamped to 1,
    so an all-padding row gives 0 (and zero gradient) instead of NaN.

    Args:
        x: any shape, floating point, e.g. per-token losses ``(B, T)``.
        mask: bool or 0/1, broadcastable to ``x``; ``None`` is a plain mean.
        dim: dimension(s) to reduce; ``None`` reduces everything to a scalar.

    Returns:
        ``x.mean(dim)``'s shape.
    """
    if mask is None and _exact(n := _count(x, dim), x):  # no tensor of ones to sum: same bits
        return _sum(x, dim) / max(n, 1)
    kept, m = _keep(x, mask)
    return _sum(kept, dim) / _sum(m, dim).clamp_min(1.0)


def _count(x: Tensor, dim: Dim) -> int:
    """Entries of ``x`` that one reduction over ``dim`` sums."""
    if dim is None:
        return x.numel()
    return math.prod(x.shape[d] for d in ((dim,) if isinstance(dim, int) else dim))


def _exact(n: int, x: Tensor) -> bool:
    """Whether ``x``'s dtype holds the integer ``n`` exactly, as a sum of ``n`` ones then is:
    dividing by ``n`` gives the bits of dividing by that sum (2^24 for float32, 256 for
    bfloat16)."""
    return x.is_floating_point() and n * torch.finfo(x.dtype).eps <= 2.0


def masked_var(x: Tensor, mask: Tensor | None, unbiased: bool = True) -> Tensor:
    """Variance of the kept entries of ``x`` (a scalar), Bessel-corrected if ``unbiased``.

    With fewer than two kept entries the correction is skipped (the variance is then 0).
    """
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    if unbiased:
        if mask is None and _exact(n := x.numel(), x):
            return var * n / max(n - 1, 1)
        count = _keep(x, mask)[1].sum()
        var = var * count / (count - 1).clamp_min(1.0)
    return var


def masked_whiten(
    x: Tensor, mask: Tensor | None, shift_mean: bool = True, eps: float = 1e-8,
    total: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Normalise ``x`` to zero mean and unit variance using the statistics of the kept entries.

    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back, so only the
    scale changes (TRL does this for rewards, whose sign carries meaning). Used for advantage
    normalisation in PPO (Schulman et al. 2017; CleanRL ``norm_adv``), with ``mask=None`` over a
    flat minibatch and with a token mask in RLHF.

    Args:
        x: any shape, floating point.
        mask: bool or 0/1, broadcastable to ``x``; ``None`` uses every entry.
        shift_mean: subtract the mean (``True``) or keep it (``False``).
        eps: added to the variance before the square root.
        total: data parallel: sums a 1-D tensor over the processes (``x`` is this process's
            part of the batch), so that the statistics are the whole batch's; two small
            collectives (the mean, then the squared deviations from it, as the one-process
            two-pass formula).

    Returns:
        Same shape as ``x``. Entries outside the mask are transformed too (they did not count
        towards the statistics); mask them again downstream.
    """
    if total is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        keep = torch.ones_like(x) if mask is None else mask.to(x.dtype).expand_as(x)
        sums = total(torch.stack([(x * keep).sum(), keep.sum()]))
        count = sums[1].clamp_min(1.0)
        mean = sums[0] / count
        var = total(((x - mean) ** 2 * keep).sum().reshape(1))[0] / count
        var = var * count / (count - 1).clamp_min(1.0)  # Bessel, as masked_var
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean
