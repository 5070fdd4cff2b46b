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
(:func:`xnn.style.losses.content_loss` with ``scaling="jcjohnson"``, which takes any batch).
Every function returns (loss, grad) with ``loss`` a 0-d array on the features' device and ``grad``
in the features' memory order (channels-last for convolution outputs).
"""
from __future__ import annotations

import copy

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
    grad = xp.empty((n, h, w, c), dtype=F.dtype)
    # dX = X D * 4 / (N C^3 H W), (N, M, C), the factor on the C x C matrices: one pass over M x C
    xp.matmul(X, D * (4.0 / (n * c ** 3 * h * w)), out=grad.reshape(n, h * w, c))
    return loss, grad.transpose(0, 3, 1, 2)


class PerceptualObjective:
    """Johnson et al.'s training objective for a batch of generated images, through a frozen VGG.

        obj = PerceptualObjective(vgg, ["relu2_2"], ["relu1_2", "relu2_2", "relu3_4", "relu4_4"],
                                  content_weight=1e5, style_weight=1e10, tv_weight=0)
        obj.set_style(vgg.preprocess(style_rgb))
        terms, dy = obj.loss_and_grad(y, x)     # y: generated, x: the photos, both (N, 3, H, W) 0..255 RGB

    total = content_weight * sum_l L_c + style_weight * sum_l w_l L_s + tv_weight * TV(y) (TV as in
    xnn.style.losses, summed over the batch); ``dy`` is d total / dy, one forward and one backward
    through VGG for the whole batch, plus one forward for the photos' content features.

    ``style_normalisation``: "none" (w_l = 1, Johnson et al.'s sum) or "target" (w_l = 1 / mean(A_l^2),
    each layer's Gram error relative to the size of its target, so that every style layer counts
    alike: with VGG19's ImageNet weights mean(A_l^2) spans 4e2 (relu4_4) to 1.3e7 (relu3_4) for
    Starry Night, and relu4_4, the layer of the painting's large strokes, adds nothing to an
    unnormalised sum).
    """

    NORMALISATIONS = ("none", "target")

    def __init__(self, vgg, content_layers, style_layers, content_weight=1.0, style_weight=1.0, tv_weight=0.0,
                 style_normalisation="none"):
        if style_normalisation not in self.NORMALISATIONS:
            raise ValueError(f"style_normalisation {style_normalisation!r}: one of {', '.join(self.NORMALISATIONS)}")
        self.vgg = vgg.freeze() if hasattr(vgg, "freeze") else vgg
        self.content_layers, self.style_layers = list(content_layers), list(style_layers)
        self.content_weight, self.style_weight, self.tv_weight = (float(content_weight), float(style_weight),
                                                                   float(tv_weight))
        self.style_normalisation = style_normalisation
        self.layers = list(dict.fromkeys(self.content_layers + self.style_layers))
        self.style_grams: dict = {}
        self.style_layer_weights: dict = {}     # w_l, set with the targets
        self._mean = self.vgg.device.asarray(self.vgg.mean_rgb.reshape(1, 3, 1, 1))   # copied to the device once

    def _input(self, rgb):
        """0..255 RGB (N, 3, H, W) on the device -> the VGG's input (the mean subtracted)."""
        return rgb - self._mean.astype(rgb.dtype, copy=False)

    def set_style(self, style_x):
        """The style targets from the style image in VGG input space, (1, 3, H, W)."""
        feats = self.vgg.features(style_x, self.style_layers)
        self.style_grams = {n: gram_batch(feats[n])[0].copy() for n in self.style_layers}
        self.style_layer_weights = {n: 1.0 if self.style_normalisation == "none" else
                                    1.0 / max(float((a * a).mean()), 1e-30) for n, a in self.style_grams.items()}
        return self

    def replica(self):
        """A twin for another part of a batch (:class:`xnn.DataParallel`'s idea): the same style
        targets and weights, a twin of the VGG (its own caches), so two threads can use the two."""
        twin = copy.copy(self)
        twin.vgg = copy.copy(self.vgg)
        twin.vgg.net = self.vgg.net.replica()
        return twin

    def loss_and_grad(self, y, x, mean_scale: float = 1.0):
        """(terms, dy) of the batch (y, x).  ``mean_scale`` multiplies the terms that are means over the
        batch (content, style) and their gradients, not TV (a sum over the batch): with n_k / N, the
        terms and gradients of a part of n_k samples add up, over the parts, to the whole batch's."""
        from .losses import content_loss, tv_loss
        xp = device_of(y).xp
        targets = self.vgg.features(self._input(x), self.content_layers)
        targets = {n: f.copy(order="K") for n, f in targets.items()}
        feats = self.vgg.features(self._input(y), self.layers)
        c_sum, s_sum, inject = xp.zeros((), y.dtype), xp.zeros((), y.dtype), {}
        for name in self.layers:
            g = None
            if name in targets:
                loss, g = content_loss(feats[name], targets[name], "jcjohnson")
                c_sum = c_sum + loss
                g *= self.content_weight * mean_scale
            if name in self.style_grams:
                loss, gs = style_loss_batch(feats[name], self.style_grams[name])
                wl = self.style_layer_weights[name]
                s_sum = s_sum + wl * loss
                gs *= self.style_weight * wl * mean_scale
                g = gs if g is None else layout.add(xp, g, gs)
            inject[name] = g
        dy = self.vgg.backward(inject=inject)
        tv = xp.zeros((), y.dtype)
        if self.tv_weight:
            tv, gtv = tv_loss(y)
            gtv *= self.tv_weight
            dy = dy + gtv
        terms = {"content": self.content_weight * mean_scale * c_sum, "style": self.style_weight * mean_scale * s_sum,
                 "tv": self.tv_weight * tv}
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms, dy
