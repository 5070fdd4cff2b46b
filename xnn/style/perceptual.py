"""Perceptual losses for training a feed-forward style network (Johnson et al. 2016), on batches.

Features F of one layer for a batch: (N, C, H, W); per sample n, X_n is F_n as an (M, C) matrix
of the M = H*W positions.

Gram matrix, normalised by the layer's size as in Johnson et al.:
    G_n = X_n^T X_n / (C M)                                  (N, C, C)
Style loss of a layer against the style image's Gram A (C, C), a mean over the N C^2 entries:
    L_s = mean_n,i,j (G_n - A)_ij^2
    dL_s/dG_n = 2 (G_n - A) / (N C^2),  and since G_n is symmetric,
    dL_s/dX_n = 2 X_n dL_s/dG_n / (C M) = 4 X_n (G_n - A) / (N C^3 M)
Content loss against target features P (same shape as F), a mean over the elements:
    L_c = mean (F - P)^2,   dL_c/dF = 2 (F - P) / size
Every function returns (loss, grad) with ``loss`` a 0-d array on the features' device and ``grad``
in the features' memory order (channels-last for convolution outputs).
"""
from __future__ import annotations

from ..backends import device_of
from ..layers import layout


def _positions(F):
    """F (N, C, H, W) as (N, M, C): a free view of channels-last memory, else one copy."""
    n, c, h, w = F.shape
    return F.transpose(0, 2, 3, 1).reshape(n, h * w, c)


def gram_batch(F):
    """G (N, C, C) = X_n^T X_n / (C M) per sample."""
    n, c, h, w = F.shape
    X = _positions(F)
    return (X.transpose(0, 2, 1) @ X) * (1.0 / (c * h * w))


def style_loss_batch(F, A):
    """(mean over N C^2 of (G_n - A)^2, its gradient w.r.t. F); A is the style's (C, C) Gram (gram_batch of
    the style image's features, [0])."""
    xp = device_of(F).xp
    n, c, h, w = F.shape
    if A.shape != (c, c):
        raise ValueError(f"style Gram {tuple(A.shape)} does not fit {c}-channel features")
    X = _positions(F)
    D = gram_batch(F) - A                                          # (N, C, C), symmetric per sample
    loss = (D * D).sum() * (1.0 / (n * c * c))
    dX = (X @ D) * (4.0 / (n * c ** 3 * h * w))                    # (N, M, C)
    grad = xp.empty((n, h, w, c), dtype=F.dtype)
    grad[...] = dX.reshape(n, h, w, c)
    return loss, grad.transpose(0, 3, 1, 2)


def content_loss_batch(F, P):
    """(mean (F - P)^2, 2 (F - P) / size), the gradient in F's memory order."""
    if F.shape != P.shape:
        raise ValueError(f"content features {tuple(F.shape)} and target {tuple(P.shape)} differ in shape")
    xp = device_of(F).xp
    d = xp.subtract(F, P, out=layout.like(xp, F))
    loss = xp.vdot(layout.flat(d), layout.flat(d)) * (1.0 / d.size)
    d *= 2.0 / d.size
    return loss, d
