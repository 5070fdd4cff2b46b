"""Losses of neural style transfer (Gatys, Ecker & Bethge 2016) and their gradients.

Every function takes device arrays, works with the input's own ``xp`` (NumPy or
CuPy) and returns ``(loss, grad)``: ``loss`` a 0-d array on the same device (no
host sync), ``grad`` the gradient of ``loss`` w.r.t. the input, same shape and
dtype.  Features are one image's activations, shape (1, C, H, W); N = C is the
channel count and M = H*W the number of positions.

Content (at one layer), target features P:
    L_c = 1/2 sum (F - P)^2                       dL_c/dF = F - P
Gram matrix of F viewed as a C x M matrix (unnormalised):
    G = F F^T,  G_ij = sum_m F_im F_jm            dG:  dF = (dG + dG^T) F
Style (at one layer), target A = G_s / M_s: the style image's Gram per position (its
own M_s positions), so that neither image's size changes what is asked for:
    E = sum (G / M - A)^2 / (4 N^2)
    dE/dG = (G / M - A) / (2 N^2 M), and since G / M - A is symmetric,
    dE/dF = (dE/dG + dE/dG^T) F = (G / M - A) F / (N^2 M).
  Where M = M_s this is Gatys et al.'s sum (G - G_s)^2 / (4 N^2 M^2) exactly.
  Computed as D = (G / M - A) / N; E = sum(D^2) / 4; dE/dF = D F / (N M), so no
  intermediate grows beyond G itself (float32-safe for large layers).
Total variation of an image x (..., H, W), all neighbouring pairs:
    TV = sum_{i,j} (x[i+1,j] - x[i,j])^2 + (x[i,j+1] - x[i,j])^2
    dTV/dx[i,j] = 2 (dv[i-1,j] - dv[i,j] + dh[i,j-1] - dh[i,j]),
  with dv = x[1:, :] - x[:-1, :] and dh = x[:, 1:] - x[:, :-1] (terms outside the
  image are zero).  This is the squared-difference TV of jcjohnson/neural-style,
  whose TVLoss back-propagates strength * (dv + dh) over the top-left
  (H-1) x (W-1) block, i.e. the gradient of 1/2 of that block's part of this sum:
  its ``tv_weight`` w corresponds to about w / 2 here.
"""
from __future__ import annotations

import numpy

from ..backends import device_of, to_numpy
from ..blend import normalise_blend_weights
from ..errors import XnnError
from ..layers import layout


def _check_features(F, what="features"):
    if F.ndim != 4 or F.shape[0] != 1:
        raise ValueError(f"{what} must have shape (1, C, H, W), got {tuple(F.shape)}")


def _as_positions(F):
    """F (1, C, H, W) as an (M, C) matrix, positions by channels.

    xnn's convolutions return NCHW views of NHWC memory, so this is usually a
    free view; otherwise it is one copy.
    """
    _, c, h, w = F.shape
    return F[0].transpose(1, 2, 0).reshape(h * w, c)


def _from_positions(X, shape):
    """Inverse of :func:`_as_positions`: (M, C) back to an NCHW view (1, C, H, W)."""
    _, c, h, w = shape
    return X.reshape(1, h, w, c).transpose(0, 3, 1, 2)


#: loss_scaling values: "gatys" (the formulas above) or "jcjohnson" (neural-style's, see below)
SCALINGS = ("gatys", "jcjohnson")
#: the TV term's factor on :func:`tv_loss` per scaling (jcjohnson: 1/2 sum of squared differences)
TV_FACTOR = {"gatys": 1.0, "jcjohnson": 0.5}


def check_scaling(scaling: str) -> str:
    if scaling not in SCALINGS:
        raise XnnError(f"unknown loss_scaling {scaling!r}; choose one of: {', '.join(SCALINGS)}")
    return scaling


def content_loss(F, P, scaling: str = "gatys"):
    """Content loss and its gradient.  F, P: same shape, n elements.

    gatys:     L = 1/2 sum (F - P)^2,   dL/dF = F - P
    jcjohnson: L = mean((F - P)^2),     dL/dF = 2 (F - P) / n

    The gradient is a fresh array in F's memory order (channels-last for conv
    features), on every backend."""
    if F.shape != P.shape:
        raise ValueError(f"content features {tuple(F.shape)} and target {tuple(P.shape)} differ in shape")
    xp = device_of(F).xp
    d = xp.subtract(F, P, out=layout.like(xp, F))
    squares = xp.vdot(layout.flat(d), layout.flat(d))
    if check_scaling(scaling) == "gatys":
        return 0.5 * squares, d
    d *= 2.0 / d.size
    return squares / F.size, d


def gram_matrix(F):
    """G = F F^T (C, C) of features F (1, C, H, W) seen as a C x M matrix; unnormalised."""
    _check_features(F)
    X = _as_positions(F)
    return X.T @ X


def gram_backward(F, dG):
    """Gradient w.r.t. F (1, C, H, W) of a scalar whose gradient w.r.t. G = F F^T is dG:
    dF = (dG + dG^T) F."""
    _check_features(F)
    X = _as_positions(F)
    return _from_positions(X @ (dG + dG.T).T, F.shape)


def style_target(G, c: int, m: int, scaling: str = "gatys"):
    """A style image's target from its unnormalised Gram G (C x C) over its own m positions:
    G / m (gatys: the Gram per position), or G / (C m) (jcjohnson)."""
    return G * (1.0 / m) if check_scaling(scaling) == "gatys" else G * (1.0 / (c * m))


def style_terms(G, A, c: int, m: int, scaling: str = "gatys"):
    """(loss, D, k) of the style loss at one layer from the unnormalised Gram G of the
    optimised image's features (C = c channels, m positions); the gradient w.r.t. the
    features seen as an (m, C) matrix X is X @ D * k.

    gatys:     D = (G / m - A) / C,   loss = sum(D^2) / 4,   k = 1 / (C m)
    jcjohnson: D = G / (C m) - A,     loss = mean(D^2) = sum(D^2) / C^2,   k = 4 / (C^2 C m)
    (for jcjohnson d mean(D^2) / dG = 2 D / (C^2 C m), and dG = dG^T gives dX = 2 X dG).
    A is :func:`style_target`'s, per position in both scalings, so the loss does not grow or
    shrink with either image's size.  D is symmetric and no intermediate grows beyond G, so
    float32 is safe for large layers.
    """
    inv_nm = 1.0 / (c * m)
    if check_scaling(scaling) == "gatys":
        D = (G * (1.0 / m) - A) * (1.0 / c)
        return 0.25 * (D * D).sum(), D, inv_nm
    D = G * inv_nm - A
    return (D * D).sum() * (1.0 / (c * c)), D, 4.0 * inv_nm / (c * c)


def style_loss(F, A, scaling: str = "gatys"):
    """Style loss at one layer and its gradient w.r.t. F (see :func:`style_terms`).

    gatys: E = sum (G / M - A)^2 / (4 N^2) and dE/dF = (G / M - A) F / (N^2 M).
    F: (1, C, H, W) features; A: (C, C) target (:func:`style_target` of the scaling).
    """
    _check_features(F)
    _, c, h, w = F.shape
    if A.shape != (c, c):
        raise ValueError(f"style target Gram {tuple(A.shape)} does not fit {c}-channel features")
    X = _as_positions(F)
    loss, D, k = style_terms(X.T @ X, A, c, h * w, scaling)
    grad = _from_positions(X @ (D * k), F.shape)        # k on the C x C matrix: no pass over M x C
    return loss, grad


def blend_grams(grams, weights=None):
    """A = sum_k b_k A_k with b = weights / sum(weights) (equal weights when None).

    grams: list of (C, C) arrays (one per style image, any image sizes).
    """
    grams = list(grams)
    if not grams:
        raise ValueError("blend_grams needs at least one Gram matrix")
    b = normalise_blend_weights(weights, len(grams))
    out = grams[0] * b[0]
    for g, bk in zip(grams[1:], b[1:]):
        out = out + g * bk
    return out


def tv_loss(x):
    """TV = sum of squared differences of vertical and horizontal neighbours over the
    last two axes of x (e.g. (1, 3, H, W)), and its gradient (see the module doc)."""
    dv = x[..., 1:, :] - x[..., :-1, :]
    dh = x[..., :, 1:] - x[..., :, :-1]
    loss = (dv * dv).sum() + (dh * dh).sum()
    grad = device_of(x).xp.zeros_like(x)
    grad[..., 1:, :] += 2 * dv
    grad[..., :-1, :] -= 2 * dv
    grad[..., :, 1:] += 2 * dh
    grad[..., :, :-1] -= 2 * dh
    return loss, grad


def losses_to_host(losses: dict) -> dict:
    """Loss scalars -> Python floats, with ONE device-to-host copy for all device scalars."""
    out, on_device = {}, []
    for k, v in losses.items():
        if isinstance(v, (int, float, numpy.generic, numpy.ndarray)):
            out[k] = float(v)
        else:
            on_device.append(k)
    if on_device:
        xp = device_of(losses[on_device[0]]).xp
        values = to_numpy(xp.stack([losses[k] for k in on_device]))
        out.update(zip(on_device, map(float, values)))
    return {k: out[k] for k in losses}


class StyleTransferObjective:
    """The Gatys et al. objective of an image x, through a frozen feature network.

        total = content_weight * L_c + style_weight * L_s + tv_weight * TV(x)
        L_c = sum over content layers of 1/2 sum (F_l - P_l)^2
        L_s = sum over style layers of w_l E_l,  w_l = 1 / (number of style layers)
              unless ``style_layer_weights`` gives them

    ``loss_scaling="jcjohnson"`` uses jcjohnson/neural-style's formulas instead, so his
    weights mean what they mean in his tool: L_c = mean((F - P)^2) per layer; E_l =
    mean((G_l - A_l)^2) over the C x C entries with G = F F^T / (C H W) (and each style
    image's A normalised by its own size), layers summed (w_l = 1); TV = 1/2 sum of
    squared neighbour differences.  The reported terms are the weighted ones of the
    chosen scaling.

    ``model`` is an xnn ``Sequential`` (e.g. VGG19) taking x (1, 3, H, W) in its
    input space; the objective freezes it so that backward computes only input
    gradients.  Each :meth:`loss_and_grad` runs ONE forward, only as deep as the
    deepest loss layer (``model.features``), and ONE backward that injects every
    layer's weighted loss gradient on the way down (``model.backward(inject=...)``);
    a layer that is both a content and a style layer gets the sum.  Everything stays
    on the device; only the four loss scalars come to the host, in one copy, and
    not at all with ``to_host=False``.

    The weights default to 1 / 1 / 0: their good values depend on the network's
    activation scale (Gatys et al.'s ratio 1e-3 was for a rescaled VGG; with the
    raw ImageNet VGG19 and 0..255 input, L_c and L_s are of similar size at 1 / 1),
    so a runner should set them explicitly.
    """

    def __init__(self, model, content_layers, style_layers, *, content_weight=1.0,
                 style_weight=1.0, tv_weight=0.0, style_layer_weights=None, loss_scaling="gatys"):
        self.model = model
        self.scaling = check_scaling(loss_scaling)
        self.content_layers = _as_list(content_layers)
        self.style_layers = _as_list(style_layers)
        known = getattr(model, "names", None)
        for name in self.content_layers + self.style_layers:
            if known is not None and name not in known:
                raise XnnError(f"unknown layer {name!r}; the model's layers are: {', '.join(known)}")
        for key, v in (("content_weight", content_weight), ("style_weight", style_weight),
                       ("tv_weight", tv_weight)):
            if not float(v) >= 0:
                raise XnnError(f"{key} must be >= 0, got {v}")
        self.content_weight, self.style_weight = float(content_weight), float(style_weight)
        self.tv_weight = float(tv_weight)
        n_style = len(self.style_layers)
        if style_layer_weights is None:
            style_layer_weights = [1.0 if self.scaling == "jcjohnson" else 1.0 / n_style] * n_style \
                if n_style else []
        if len(style_layer_weights) != n_style:
            raise XnnError(f"{len(style_layer_weights)} style layer weights for {n_style} style layers")
        self.style_layer_weights = dict(zip(self.style_layers, map(float, style_layer_weights)))
        wanted = set(self.content_layers) | set(self.style_layers)
        order = known if known is not None else self.content_layers + self.style_layers
        self.layers = [n for n in dict.fromkeys(order) if n in wanted]
        self.content_targets: dict = {}   # layer -> P (1, C, H, W)
        self.style_targets: dict = {}     # layer -> blended per-position Gram target A (C, C)
        if hasattr(model, "freeze"):
            model.freeze()

    # ------------------------------------------------------------ targets
    def set_targets(self, content_x=None, style_xs=None, blend_weights=None):
        """Content features P of ``content_x`` and blended style Grams of ``style_xs``
        (one array or a list, each (1, 3, H_k, W_k), sizes may differ)."""
        if self.content_layers:
            if content_x is None:
                raise XnnError("content layers are set but no content image was given")
            feats = self.model.features(content_x, self.content_layers)
            self.content_targets = {n: feats[n].copy(order="K") for n in self.content_layers}
        if self.style_layers:
            if style_xs is None or (isinstance(style_xs, (list, tuple)) and not style_xs):
                raise XnnError("style layers are set but no style image was given")
            style_xs = list(style_xs) if isinstance(style_xs, (list, tuple)) else [style_xs]
            b = normalise_blend_weights(blend_weights, len(style_xs))
            per_image = []
            for sx in style_xs:
                feats = self.model.features(sx, self.style_layers)
                per_image.append({n: style_target(gram_matrix(f), f.shape[1], f.shape[2] * f.shape[3],
                                                  self.scaling) for n, f in feats.items()})
            self.style_targets = {n: blend_grams([g[n] for g in per_image], b)
                                  for n in self.style_layers}
        return self

    # ------------------------------------------------------------ evaluation
    def loss_and_grad(self, x, to_host: bool = True):
        """(losses, dx): losses has the weighted terms "content", "style", "tv" and
        "total" (Python floats, or 0-d device arrays with ``to_host=False``);
        dx is d total / dx on x's device, shape and dtype of x."""
        return self._evaluate(x, True, to_host)

    def losses(self, x, to_host: bool = True) -> dict:
        """The loss terms only: one forward, no backward."""
        return self._evaluate(x, False, to_host)[0]

    def _evaluate(self, x, need_grad: bool, to_host: bool):
        xp = device_of(x).xp
        missing = [n for n in self.content_layers if n not in self.content_targets] + \
                  [n for n in self.style_layers if n not in self.style_targets]
        if missing:
            raise XnnError(f"no targets for layers {missing}; call set_targets(...) first")
        cw, sw, tw = self.content_weight, self.style_weight, self.tv_weight
        c_sum = xp.zeros((), dtype=x.dtype)
        s_sum = xp.zeros((), dtype=x.dtype)
        inject = {}
        feats = self.model.features(x, self.layers) if self.layers else {}
        for name in self.layers:
            F, g = feats[name], None
            if name in self.content_targets:
                loss, g = content_loss(F, self.content_targets[name], self.scaling)
                c_sum = c_sum + loss
                if cw != 1:
                    g *= cw          # in place: g is fresh, and keeps the features' layout
                g = g if cw else None
            if name in self.style_targets:
                wl = self.style_layer_weights[name]
                loss, gs = style_loss(F, self.style_targets[name], self.scaling)
                s_sum = s_sum + wl * loss
                if sw * wl:
                    gs *= sw * wl
                    g = gs if g is None else xp.add(g, gs, out=g)
            if g is not None:
                inject[name] = g
        tv, gtv = tv_loss(x)
        tw = tw * TV_FACTOR[self.scaling]
        terms = {"content": cw * c_sum, "style": sw * s_sum, "tv": tw * tv}
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        if not need_grad:
            return (losses_to_host(terms) if to_host else terms), None
        dx = self.model.backward(inject=inject) if inject else None
        if self.layers and inject and dx is None:
            raise RuntimeError("the model returned no input gradient (its first layer has "
                               "needs_input_grad=False)")
        if tw:
            gtv *= tw
            dx = gtv if dx is None else dx + gtv
        if dx is None:
            dx = xp.zeros_like(x)
        # the backward is queued before the one sync that fetches the scalars
        return (losses_to_host(terms) if to_host else terms), dx


def _as_list(names):
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)
