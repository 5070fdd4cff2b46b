"""A folder of photos as training data: random square crops at several scales, flipped at random.

    photos = PhotoFolder("coco/train2014", hold_out=4)
    batch = photos.batch(4, 256, rng)          # uint8 (4, 256, 256, 3)
    photos.held_out                            # the first 4 readable files (sorted): previews, never
                                               # trained on (decoded: photos.held_out_images)

A crop takes a square of ``scale`` x the shorter side (``scale`` uniform in [min_scale, max_scale]) at a
random place, resizes it to the batch size (Lanczos) and mirrors it left-right with probability
1/2.  Files are decoded when drawn, so a folder of 83,000 photos starts at once; a file that
cannot be read (corrupt, truncated, not an image) is dropped from the folder and counted in
``skipped``, never a crash.  A folder with no image files, or none readable, is one clear line.
Decoded photos are kept in memory up to ``cache_bytes`` (a small folder such as Kodak's is
decoded once; a large one is read from disk as drawn).

``dataset: kodak`` in a config is :func:`kodak_folder`: the 24 Kodak photos in $XNN_HOME,
downloaded (with checksums) on first use.
"""
from __future__ import annotations

import pathlib

import numpy

from ..errors import XnnError
from .images import IMAGE_SUFFIXES, image_files


def kodak_folder():
    """$XNN_HOME/images/kodak with all 24 photos (each downloaded and checked if missing)."""
    from .cache import KODAK_MD5, fetch
    return [fetch(f"images/kodak/{name}") for name in sorted(KODAK_MD5)][0].parent


class PhotoFolder:
    def __init__(self, folder, hold_out: int = 0, min_scale: float = 0.5, max_scale: float = 1.0,
                 cache_bytes: int = 1 << 30):
        folder = pathlib.Path(folder)
        if not folder.is_dir():
            raise XnnError(f"dataset {folder} is not a folder of photos")
        files = image_files(folder)
        if len(files) <= hold_out:
            raise XnnError(f"dataset {folder} has {len(files)} image file(s) ({', '.join(IMAGE_SUFFIXES)}); it needs more "
                           f"than the {hold_out} held out for previews")
        if not 0 < min_scale <= max_scale <= 1:
            raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
        from .images import load_image
        self.folder, self.min_scale, self.max_scale = folder, min_scale, max_scale
        self.skipped: list[str] = []          # "name: why" of each file dropped
        self.cache_bytes, self._cache, self._cached_bytes = cache_bytes, {}, 0
        self.held_out, self.held_out_images = [], []     # the first readable files, decoded
        while len(self.held_out) < hold_out and files:
            path = files.pop(0)
            try:
                self.held_out_images.append(load_image(path))
                self.held_out.append(path)
            except XnnError as e:
                self.skipped.append(f"{path.name}: {e}")
        if not files:
            raise XnnError(f"dataset {folder}: no readable photo is left for training after the {hold_out} held out "
                           f"for previews ({len(self.skipped)} unreadable file(s) skipped)")
        self.files = files

    def __len__(self):
        return len(self.files)

    def _draw(self, rng):
        """A readable photo drawn at random, uint8 (H, W, 3); unreadable files are dropped on the way."""
        from .images import load_image
        while self.files:
            i = int(rng.integers(len(self.files)))
            path = self.files[i]
            if path in self._cache:
                return self._cache[path]
            try:
                image = load_image(path)
                if self._cached_bytes + image.nbytes <= self.cache_bytes:
                    self._cache[path] = image
                    self._cached_bytes += image.nbytes
                return image
            except XnnError as e:
                self.skipped.append(f"{self.files[i].name}: {e}")
                del self.files[i]
        raise XnnError(f"dataset {self.folder}: none of its image files can be read ({len(self.skipped)} skipped; "
                       f"the first: {self.skipped[0] if self.skipped else 'none'})")

    def crop(self, image, size: int, rng) -> numpy.ndarray:
        """A random square crop of ``image`` at a random scale, resized to size x size, maybe mirrored."""
        from .images import resize_to
        h, w = image.shape[:2]
        side = max(1, int(round(min(h, w) * rng.uniform(self.min_scale, self.max_scale))))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        out = resize_to(image[y:y + side, x:x + side], (size, size))
        return out[:, ::-1] if rng.random() < 0.5 else out

    def batch(self, n: int, size: int, rng) -> numpy.ndarray:
        """uint8 (n, size, size, 3): n crops of photos drawn at random (with replacement)."""
        return numpy.stack([self.crop(self._draw(rng), size, rng) for _ in range(n)])
