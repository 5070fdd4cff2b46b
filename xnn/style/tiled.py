"""The Gatys objective evaluated tile by tile: memory set by the tile, not the image.

A Gram matrix is a sum over positions, so it can be accumulated tile by tile (Galerne et
al. 2022, "Scaling painting style transfer"); with it known, each position's gradient
(G / M - A) F / (N^2 M) is local.  :class:`TiledStyleObjective` therefore evaluates in two
passes over tiles with halos (:mod:`xnn.tiling`):

1. forward only, to the deepest style layer: G_l = sum over tiles of F_own^T F_own, in
   float64, where F_own are the features the tile owns;
2. forward and ONE backward per tile, injecting the content gradient (F - P) and the style
   gradient D_l F / (N M) on the tile's own features only (zero on its halo), and adding
   the tile's image gradient (halo included) into the whole gradient.

TV is computed on the whole image.  Content targets and style Grams are computed tiled
too, so a style image larger than memory allows works the same way.  The losses and the
gradient equal :class:`~xnn.style.losses.StyleTransferObjective`'s to float32 round-off
(tested); one evaluation costs about two forwards and one backward over the tiles plus
their halos, instead of one forward and one backward over the image.
"""
from __future__ import annotations

from ..backends import device_of
from ..errors import XnnError
from .. import tiling
from ..blend import normalise_blend_weights
from .losses import (TV_FACTOR, StyleTransferObjective, _as_positions, losses_to_host, style_target, style_terms,
                     tv_loss)


class TiledStyleObjective:
    """Wraps a :class:`StyleTransferObjective` (its model, layers and weights); same interface.

    ``tile_size``: the side of a tile's own region in input pixels, rounded up to a
    multiple of the model's deepest pooling step (16 for VGG19 to relu5_1).  The halo is
    the receptive-field margin of the deepest loss layer (80 px for relu5_1).
    """

    def __init__(self, objective: StyleTransferObjective, tile_size: int):
        self.obj = objective
        model = objective.model
        net = getattr(model, "net", model)
        names = list(net.names)
        deepest = max(objective.layers, key=names.index)
        self.geometry = {n: tiling.receptive_field(net.layers[m] for m in names[:names.index(n) + 1])
                         for n in objective.layers}
        deep = self.geometry[deepest]
        self.align = int(deep.jump)
        self.halo = tiling.round_up(max(g.halo for g in self.geometry.values()), self.align)
        self.tile_size = tiling.round_up(int(tile_size), self.align)
        self.content_targets: dict = {}
        self.style_targets: dict = {}    # layer -> blended per-position Gram target A (C, C), float64

    # ------------------------------------------------------------ helpers
    def tiles(self, shape):
        return tiling.plan(shape[2], shape[3], self.tile_size, self.halo, self.align)

    def _own(self, feats, name, tile):
        rows, cols = tile.own_features(int(self.geometry[name].jump))
        return feats[name][:, :, rows, cols]

    def _positions(self, x, layer) -> int:
        j = int(self.geometry[layer].jump)
        return (x.shape[2] // j) * (x.shape[3] // j)

    def _grams(self, x, layers):
        """Float64 unnormalised Grams of x's features at ``layers``, accumulated over tiles' own regions."""
        xp = device_of(x).xp
        grams = {n: None for n in layers}
        for tile in self.tiles(x.shape):
            rows, cols = tile.slices()
            feats = self.obj.model.features(x[:, :, rows, cols], layers)
            for n in layers:
                own = self._own(feats, n, tile)
                if own.size == 0:
                    continue
                X = _as_positions(own)
                g = (X.T @ X).astype(xp.float64)
                grams[n] = g if grams[n] is None else grams[n] + g
        return grams

    # ------------------------------------------------------------ targets
    def set_targets(self, content_x=None, style_xs=None, blend_weights=None):
        obj = self.obj
        if obj.content_layers:
            if content_x is None:
                raise XnnError("content layers are set but no content image was given")
            xp = device_of(content_x).xp
            full = {}
            for tile in self.tiles(content_x.shape):
                rows, cols = tile.slices()
                feats = obj.model.features(content_x[:, :, rows, cols], obj.content_layers)
                for n in obj.content_layers:
                    j = int(self.geometry[n].jump)
                    if n not in full:   # channels-last memory, like the features it is compared with
                        c = feats[n].shape[1]
                        h, w = content_x.shape[2] // j, content_x.shape[3] // j
                        full[n] = xp.empty((1, h, w, c), dtype=content_x.dtype).transpose(0, 3, 1, 2)
                    y0, y1, x0, x1 = tile.own
                    full[n][:, :, y0 // j:y1 // j, x0 // j:x1 // j] = self._own(feats, n, tile)
            self.content_targets = full
        if obj.style_layers:
            if style_xs is None or (isinstance(style_xs, (list, tuple)) and not style_xs):
                raise XnnError("style layers are set but no style image was given")
            style_xs = list(style_xs) if isinstance(style_xs, (list, tuple)) else [style_xs]
            b = normalise_blend_weights(blend_weights, len(style_xs))
            per_image = [{n: style_target(g, g.shape[0], self._positions(sx, n), obj.scaling)
                          for n, g in self._grams(sx, obj.style_layers).items()} for sx in style_xs]
            self.style_targets = {n: sum(bk * g[n] for bk, g in zip(b, per_image)) for n in obj.style_layers}
        return self

    # ------------------------------------------------------------ evaluation
    def loss_and_grad(self, x, to_host: bool = True):
        return self._evaluate(x, True, to_host)

    def losses(self, x, to_host: bool = True) -> dict:
        return self._evaluate(x, False, to_host)[0]

    def _evaluate(self, x, need_grad: bool, to_host: bool):
        obj = self.obj
        xp = device_of(x).xp
        cw, sw, tw = obj.content_weight, obj.style_weight, obj.tv_weight
        # pass 1: the whole image's Grams, and from them D_l (style_terms)
        grams = self._grams(x, obj.style_layers) if obj.style_layers else {}
        scale, s_sum = {}, xp.zeros((), dtype=xp.float64)
        for n in obj.style_layers:
            loss, d, k = style_terms(grams[n], self.style_targets[n], grams[n].shape[0],
                                     self._positions(x, n), obj.scaling)
            s_sum = s_sum + obj.style_layer_weights[n] * loss
            scale[n] = (d.astype(x.dtype), k)
        # pass 2: content loss, and the backward of every tile with its own-region gradients
        c_sum = xp.zeros((), dtype=xp.float64)
        grad = xp.zeros_like(x) if need_grad else None
        for tile in self.tiles(x.shape):
            rows, cols = tile.slices()
            layers = obj.layers if need_grad else obj.content_layers
            if not layers:
                break
            feats = obj.model.features(x[:, :, rows, cols], layers)
            inject = {}
            for n in layers:
                own = self._own(feats, n, tile)
                if own.size == 0:
                    continue
                g_own = None
                if n in self.content_targets:
                    y0, y1, x0, x1 = tile.own
                    j = int(self.geometry[n].jump)
                    diff = own - self.content_targets[n][:, :, y0 // j:y1 // j, x0 // j:x1 // j]
                    squares = (diff * diff).sum(dtype=xp.float64)
                    if obj.scaling == "gatys":
                        c_sum, factor = c_sum + 0.5 * squares, cw
                    else:       # mean over the whole layer's elements
                        numel = self._positions(x, n) * own.shape[1]
                        c_sum, factor = c_sum + squares / numel, cw * 2.0 / numel
                    g_own = diff * factor if cw else None
                if need_grad and n in scale and sw * obj.style_layer_weights[n]:
                    d, k = scale[n]
                    X = _as_positions(own)
                    gs = (X @ d) * (k * sw * obj.style_layer_weights[n])
                    gs = gs.reshape(1, own.shape[2], own.shape[3], own.shape[1]).transpose(0, 3, 1, 2)
                    g_own = gs if g_own is None else g_own + gs
                if g_own is not None:
                    g = xp.zeros_like(feats[n])
                    r, cc = tile.own_features(int(self.geometry[n].jump))
                    g[:, :, r, cc] = g_own
                    inject[n] = g
            if need_grad and inject:
                grad[:, :, rows, cols] += obj.model.backward(inject=inject)
        tv, gtv = tv_loss(x)
        tw = tw * TV_FACTOR[obj.scaling]
        terms = {"content": cw * c_sum.astype(x.dtype), "style": sw * s_sum.astype(x.dtype), "tv": tw * tv}
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        if need_grad and tw:
            gtv *= tw
            grad += gtv
        return (losses_to_host(terms) if to_host else terms), grad

