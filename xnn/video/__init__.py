"""Video stylisation: read and write video (:mod:`.io`), optical flow and the temporal error
(:mod:`.temporal`), the frame-by-frame stylizer with temporal state (:mod:`.stylize`), and
clips made from a still photo for examples and tests (:mod:`.clips`).

The runner is :mod:`xnn.experiments.video` (``configs/video.yaml``); Ray runs it at scale
(:mod:`xnn.engines.ray`).  Needs ``pip install 'xnn[video]'`` (PyAV, OpenCV).
"""
