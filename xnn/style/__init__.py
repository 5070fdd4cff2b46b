"""Neural style transfer (Gatys, Ecker & Bethge 2016): losses, objective, image optimisers.

losses.py: the losses and the objective; optimizers.py: L-BFGS-B (SciPy), L-BFGS on the
device and Adam on an image.  StopFlag (Ctrl-C as a stop request) lives in xnn.stop.

    obj = StyleTransferObjective(vgg, ["relu4_2"], ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
                                 content_weight=1.0, style_weight=1.0, tv_weight=1e-3)
    obj.set_targets(content_x, [style_x1, style_x2], blend_weights=[0.7, 0.3])
    losses, dx = obj.loss_and_grad(x)            # one forward, one backward
    res = lbfgs_minimize(obj.loss_and_grad, x, bounds=(lo, hi), max_iter=500, callback=log)
"""
from ..blend import normalise_blend_weights
from ..stop import StopFlag
from .optimizers import (MinimizeResult, adam_minimize, clip_to_range, lbfgs_device_minimize, lbfgs_minimize,
                         total_of)
from .losses import (StyleTransferObjective, blend_grams, content_loss, gram_backward, gram_matrix,
                     losses_to_host, style_loss, tv_loss)

__all__ = ["StyleTransferObjective", "content_loss", "gram_matrix", "gram_backward", "style_loss",
           "blend_grams", "normalise_blend_weights", "tv_loss", "losses_to_host", "lbfgs_minimize",
           "lbfgs_device_minimize", "adam_minimize", "clip_to_range", "MinimizeResult", "StopFlag",
           "total_of"]
