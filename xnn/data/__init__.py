"""Data: the cache (XNN_HOME), MNIST, images."""
from .cache import fetch, home
from .images import (center_crop, feature_map_grid, load_image, resize_and_center_crop,
                     resize_longer_side, resize_shorter_side, resize_to, rgb_to_yiq, save_image,
                     side_by_side, to_uint8, transfer_luminance, yiq_to_rgb)
from .mnist import batches, load_mnist, read_idx

__all__ = ["fetch", "home", "load_mnist", "read_idx", "batches", "load_image", "save_image",
           "to_uint8", "resize_to", "resize_longer_side", "resize_shorter_side", "center_crop",
           "resize_and_center_crop", "rgb_to_yiq", "yiq_to_rgb", "transfer_luminance",
           "side_by_side", "feature_map_grid"]
