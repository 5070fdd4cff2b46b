"""Adaptive instance normalisation (Huang & Belongie, ICCV 2017).

For features x (N, C, H, W), per sample n and channel c, over the M = H*W pixels:

    mu(x)    = (1/M) sum_p x_p
    sigma(x) = sqrt( (1/(M-1)) sum_p (x_p - mu)^2 + eps )     (unbiased variance, as
                                                               the reference code)
    AdaIN(x, s) = sigma(s) * (x - mu(x)) / sigma(x) + mu(s)

i.e. the content features are instance-normalised and given the style's
per-channel mean and standard deviation.  ``s`` may have another H x W than x, and a
batch of 1 (one style for every content sample) or N.

Mixing styles and content.  The reference code mixes the AdaIN *outputs*,
t = sum_i w_i AdaIN(x, s_i), then out = alpha * t + (1 - alpha) * x.  Because
AdaIN(x, s) is affine in (mu(s), sigma(s)) for fixed x, t equals AdaIN with the
blended statistics mu_t = sum_i w_i mu(s_i), sigma_t = sum_i w_i sigma(s_i), exactly;
that is how it is computed here (one pass over x whatever the number of styles).
"""
from __future__ import annotations

from ..blend import normalise_blend_weights
from .base import Layer


def channel_stats(feat, eps: float = 1e-5):
    """(mean, std) of each channel of each sample, both (N, C, 1, 1); std as above."""
    if feat.ndim != 4:
        raise ValueError(f"AdaIN expects (N, C, H, W) features, got {tuple(feat.shape)}")
    m = feat.shape[2] * feat.shape[3]
    if m < 2:
        raise ValueError(f"AdaIN needs at least 2 pixels per channel for an unbiased variance, "
                         f"got {feat.shape[2]}x{feat.shape[3]}")
    mean = feat.mean(axis=(2, 3), keepdims=True)
    xc = feat - mean
    var = (xc * xc).sum(axis=(2, 3), keepdims=True) / (m - 1)
    return mean, (var + eps) ** 0.5


def blend_stats(stats, weights=None):
    """sum_i w_i mean_i, sum_i w_i std_i for a list of (mean, std), with the weights
    normalised to sum 1 (xnn.blend's rule); equal weights 1/k by default."""
    stats = list(stats)
    if not stats:
        raise ValueError("need at least one style")
    weights = normalise_blend_weights(weights, len(stats))
    mean = sum(float(w) * m for w, (m, _) in zip(weights, stats))
    std = sum(float(w) * s for w, (_, s) in zip(weights, stats))
    return mean, std


def normalised(feat, eps: float = 1e-5):
    """(xhat, 1 / sigma): the features instance-normalised per (n, c), and the inverse std."""
    mean, std = channel_stats(feat, eps)
    inv_std = 1 / std
    return (feat - mean) * inv_std, inv_std


def restyle(xhat, x, mean_t, std_t, alpha: float = 1.0):
    """THE AdaIN formula, with the content mix: alpha * (sigma_t * xhat + mu_t) + (1 - alpha) * x."""
    y = xhat * (alpha * std_t) + alpha * mean_t
    return y if alpha == 1 else y + (1 - alpha) * x


def adain_with_stats(content_feat, mean_t, std_t, alpha: float = 1.0, eps: float = 1e-5, content_stats=None):
    """AdaIN of (N, C, H, W) content features with given target statistics (1 or N, C, 1, 1).

    ``content_stats``: (mean, std), each (N, C, 1, 1), to normalise the content with instead of its
    own (a video smooths them over frames); default: the content's own, :func:`channel_stats`.
    """
    if mean_t.shape[1] != content_feat.shape[1]:
        raise ValueError(f"content has {content_feat.shape[1]} channels, style {mean_t.shape[1]}")
    mean_c, std_c = channel_stats(content_feat, eps) if content_stats is None else content_stats
    return restyle((content_feat - mean_c) * (1 / std_c), content_feat, mean_t, std_t, alpha)


def adain(content_feat, style_feat, eps: float = 1e-5):
    """AdaIN(content, style): (N, C, H, W) content, (N or 1, C, H', W') style -> (N, C, H, W)."""
    return adain_with_stats(content_feat, *channel_stats(style_feat, eps), eps=eps)


def adain_mix(content_feat, style_feats, weights=None, alpha: float = 1.0, eps: float = 1e-5):
    """alpha * sum_i w_i AdaIN(c, s_i) + (1 - alpha) * c  (the reference code's mixing).

    ``style_feats``: one feature array or a list; ``weights`` are normalised to sum 1
    (default: equal).
    """
    if not isinstance(style_feats, (list, tuple)):
        style_feats = [style_feats]
    mean_t, std_t = blend_stats([channel_stats(s, eps) for s in style_feats], weights)
    return adain_with_stats(content_feat, mean_t, std_t, alpha, eps)


class AdaIN(Layer):
    """AdaIN of the input (content) features with style statistics set beforehand.

        layer.set_style(style_feat)                   # or a list + weights
        layer.set_style_stats(mean, std)              # (1 or N, C, 1, 1) each
        y = layer.forward(x)                          # (N, C, H, W)

    Forward, with xhat = (x - mu(x)) / sigma(x) and the target (mu_t, sigma_t):
        y = alpha * (sigma_t * xhat + mu_t) + (1 - alpha) * x
    Backward w.r.t. x (style statistics are constants): with g = alpha * sigma_t * dy
    and sums over the M pixels of each (n, c), the instance-norm backward with the
    unbiased variance (d sigma / d x_p = xhat_p / (M - 1)) is
        dx = (g - mean(g) - xhat * sum(g * xhat) / (M - 1)) / sigma(x) + (1 - alpha) * dy.
    No parameters.
    """

    def __init__(self, eps: float = 1e-5, alpha: float = 1.0, device=None):
        super().__init__(device)
        self.eps, self.alpha = eps, float(alpha)
        self.mean_t = self.std_t = None
        self._clear_cache()

    def set_style(self, style_feats, weights=None):
        """Target statistics from one style feature array, or a weighted list of them."""
        if not isinstance(style_feats, (list, tuple)):
            style_feats = [style_feats]
        for s in style_feats:
            self.device.check(s, "style features")
        self.mean_t, self.std_t = blend_stats([channel_stats(s, self.eps) for s in style_feats], weights)
        return self

    def set_style_stats(self, mean, std):
        """Target statistics given directly, each (1 or N, C, 1, 1) on this layer's device."""
        self.device.check(mean, "style mean")
        self.device.check(std, "style std")
        self.mean_t, self.std_t = mean, std
        return self

    def forward(self, x):
        if self.mean_t is None:
            raise ValueError("AdaIN has no style: call set_style(...) or set_style_stats(...) first")
        if self.mean_t.shape[1] != x.shape[1]:
            raise ValueError(f"AdaIN style has {self.mean_t.shape[1]} channels, input {x.shape[1]}")
        self._xhat, self._inv_std = normalised(x, self.eps)
        return restyle(self._xhat, x, self.mean_t, self.std_t, self.alpha)

    def backward(self, dy):
        xhat, inv_std = self._xhat, self._inv_std
        m = xhat.shape[2] * xhat.shape[3]
        g = dy * (self.alpha * self.std_t)
        gx = (g * xhat).sum(axis=(2, 3), keepdims=True) / (m - 1)
        dx = (g - g.mean(axis=(2, 3), keepdims=True) - xhat * gx) * inv_std
        return dx if self.alpha == 1 else dx + (1 - self.alpha) * dy

    def to(self, device=None, dtype=None):
        """Move the layer; the style statistics move (and cast) along with it."""
        old = self.device
        super().to(device, dtype)
        if self.mean_t is not None:
            cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
            self.mean_t = self.device.asarray(cast(old.to_numpy(self.mean_t)))
            self.std_t = self.device.asarray(cast(old.to_numpy(self.std_t)))
        return self

    def _clear_cache(self):
        self._xhat = self._inv_std = None
